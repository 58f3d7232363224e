-- The assistant module: model requests queued durably by the update's unit of work and
-- answered by the bot's assistant job outside any transaction; the reply goes into the history
-- (role `assistant`) and the outbox together.

-- History gets a fourth role, the model's answers. The previous binary writes only the other
-- three, which the new check still accepts; NOT VALID skips re-checking the existing rows
-- (they all satisfy it) and so takes no long lock.
-- botvisor: allow drop-constraint replaced at once by a wider check (roles user, bot, admin, assistant) that every row and every older binary's write satisfies
ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE messages ADD CONSTRAINT messages_role_check
    CHECK (role IN ('user', 'bot', 'admin', 'assistant')) NOT VALID;

-- One row per question to the model. Done once the reply (or the failure text) is in the
-- outbox, in the same transaction: a crash before that repeats the call, never the answer.
CREATE TABLE assistant_requests (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id         BIGINT      NOT NULL,
    user_id         BIGINT      NULL,
    language_code   TEXT        NULL,
    -- The history message being answered: the context is taken up to it.
    until_message   BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at         TIMESTAMPTZ NULL,
    -- answered or failed.
    outcome         TEXT        NULL,
    -- The last failure (never containing the API key).
    error           TEXT        NULL
);

CREATE INDEX assistant_requests_pending ON assistant_requests (next_attempt_at, id) WHERE done_at IS NULL;
CREATE INDEX assistant_requests_user_day ON assistant_requests (user_id, created_at);

-- `/reset`: the context of a chat starts after this history message (the history is kept).
CREATE TABLE assistant_contexts (
    chat_id       BIGINT      PRIMARY KEY,
    since_message BIGINT      NOT NULL,
    reset_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
