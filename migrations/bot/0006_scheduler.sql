-- The scheduler: jobs per bot, added and removed at runtime, and the history of their runs.
-- An occurrence is claimed by inserting its run (the primary key makes it once) in the same
-- transaction as its effects, so it runs exactly once across restarts and instances.

CREATE TABLE schedule_jobs (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- once (run_at) or cron (cron in tz).
    kind       TEXT        NOT NULL CHECK (kind IN ('once', 'cron')),
    run_at     TIMESTAMPTZ NULL,
    cron       TEXT        NULL,
    tz         TEXT        NOT NULL DEFAULT 'UTC',
    -- Whom: one chat, or an audience (all, lang:CODE, active-days:N, admins).
    chat_id    BIGINT      NULL,
    audience   TEXT        NULL,
    -- What: a text, a text key, or (broadcast) a broadcast of the text or key.
    text       TEXT        NULL,
    text_key   TEXT        NULL,
    broadcast  BOOLEAN     NOT NULL DEFAULT FALSE,
    -- run-once or skip: what a missed occurrence (downtime) comes to.
    misfire    TEXT        NOT NULL DEFAULT 'run-once' CHECK (misfire IN ('run-once', 'skip')),
    paused     BOOLEAN     NOT NULL DEFAULT FALSE,
    -- The next occurrence not yet claimed (NULL: a one-off that ran).
    next_due   TIMESTAMPTZ NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX schedule_jobs_due ON schedule_jobs (next_due) WHERE NOT paused AND next_due IS NOT NULL;

CREATE TABLE schedule_runs (
    job_id     BIGINT      NOT NULL REFERENCES schedule_jobs (id) ON DELETE CASCADE,
    due_at     TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- sent, late (run after a misfire), skipped, broadcast (started one) or failed.
    outcome    TEXT        NOT NULL,
    late_ms    BIGINT      NOT NULL DEFAULT 0,
    detail     TEXT        NULL,
    PRIMARY KEY (job_id, due_at)
);
