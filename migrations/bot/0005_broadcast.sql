-- Broadcasts (mailings to a bot's users). A broadcast's audience is frozen when it starts:
-- one row per recipient, marked only from the outbox's result (never when queued), so a
-- restart, a kill -9 or a pause continues where it stopped.

CREATE TABLE broadcasts (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- scheduled, running, paused, done or cancelled.
    state               TEXT        NOT NULL DEFAULT 'scheduled'
                        CHECK (state IN ('scheduled', 'running', 'paused', 'done', 'cancelled')),
    -- What is sent: a text, a text key rendered per recipient, or a copy of a message.
    text                TEXT        NULL,
    text_key            TEXT        NULL,
    copy_from_chat      BIGINT      NULL,
    copy_message_id     BIGINT      NULL,
    -- An inline keyboard put on every message (JSON rows of buttons).
    buttons             JSONB       NULL,
    -- all, lang:CODE, active-days:N or admins.
    audience            TEXT        NOT NULL DEFAULT 'all',
    -- Who created it: cli, bot (an admin's /broadcast) or schedule.
    created_by          TEXT        NOT NULL DEFAULT 'cli',
    start_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when the audience was frozen (NULL: not yet).
    started_at          TIMESTAMPTZ NULL,
    finished_at         TIMESTAMPTZ NULL,
    -- How many runs of the bot resumed it (after a restart or a crash; a crash may repeat
    -- the sends that were in flight).
    resumed             INT         NOT NULL DEFAULT 0,
    -- The admin's progress message (an in-bot /broadcast), edited in place.
    progress_chat       BIGINT      NULL,
    progress_message_id BIGINT      NULL,
    progress_at         TIMESTAMPTZ NULL
);

CREATE INDEX broadcasts_active ON broadcasts (state) WHERE state IN ('scheduled', 'running');

CREATE TABLE broadcast_recipients (
    broadcast_id BIGINT      NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    user_id      BIGINT      NOT NULL,
    -- pending, queued (in the outbox), sent, blocked or failed.
    state        TEXT        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'queued', 'sent', 'blocked', 'failed')),
    outbox_id    BIGINT      NULL,
    error        TEXT        NULL,
    done_at      TIMESTAMPTZ NULL,
    PRIMARY KEY (broadcast_id, user_id)
);

CREATE INDEX broadcast_recipients_pending ON broadcast_recipients (broadcast_id, user_id)
    WHERE state = 'pending';
CREATE INDEX broadcast_recipients_outbox ON broadcast_recipients (outbox_id)
    WHERE state = 'queued';
