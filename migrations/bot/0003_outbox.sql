-- The transactional outbox: every message a bot wants sent is written here in the same
-- transaction as the update's effects and its "processed" mark, and delivered by the bot's
-- sender after the commit. A row is done once Telegram accepted it (message_id kept) or
-- refused it for good (outcome and error kept); a crash between a send and its mark can
-- repeat that one send, never lose it.

CREATE TABLE outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 0: replies to users, 1: scheduled messages, 2: bulk (broadcasts). Lower goes first.
    lane        SMALLINT    NOT NULL DEFAULT 0,
    chat_id     BIGINT      NOT NULL,
    user_id     BIGINT      NULL,
    -- The module that queued it; it observes the result.
    origin      TEXT        NOT NULL,
    -- The Bot API call, e.g. {"method": "sendMessage", "text": "…", "reply_markup": {…}}.
    request     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts    INT         NOT NULL DEFAULT 0,
    done_at     TIMESTAMPTZ NULL,
    -- sent, blocked, chat_not_found or failed.
    outcome     TEXT        NULL,
    message_id  BIGINT      NULL,
    error       TEXT        NULL
);

CREATE INDEX outbox_pending ON outbox (lane, id) WHERE done_at IS NULL;
CREATE INDEX outbox_done_at ON outbox (done_at) WHERE done_at IS NOT NULL;
