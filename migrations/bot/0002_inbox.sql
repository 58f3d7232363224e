-- The durable update pipeline: every update fetched from Telegram is stored here before its
-- offset is confirmed, and marked processed in the same transaction as the handler's effects.

-- Keyed by the Telegram bot (the token's numeric prefix) as well as the update id: update ids
-- are a per-bot sequence, and an operator may point a panel bot at another Telegram bot.
CREATE TABLE inbox (
    telegram_bot_id BIGINT   NOT NULL,
    update_id    BIGINT      NOT NULL,
    chat_id      BIGINT      NULL,
    payload      JSONB       NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ NULL,
    -- Set when the update could not be parsed or its handler panicked: it is "poisoned",
    -- kept for inspection with processed_at set, and never blocks the updates behind it.
    error        TEXT        NULL,
    PRIMARY KEY (telegram_bot_id, update_id)
);

CREATE INDEX inbox_pending ON inbox (telegram_bot_id, update_id) WHERE processed_at IS NULL;
CREATE INDEX inbox_processed_at ON inbox (processed_at) WHERE processed_at IS NOT NULL;

-- Small durable values of the bot: the next getUpdates offset (key `offset:<telegram bot id>`).
CREATE TABLE bot_state (
    key        TEXT        PRIMARY KEY,
    value      BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
