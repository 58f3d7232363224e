-- The daemons running against this panel. Each live instance refreshes its row every few
-- seconds; an instance that finds a fresh row of another stands by instead of running bots,
-- so one instance runs the bots and only it writes `bot_status`. A clean stop deletes the row.
CREATE TABLE instances (
    name         TEXT        PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    pid          INTEGER     NOT NULL,
    host         TEXT        NOT NULL
);
