-- Inbox rows set aside when Telegram restarted the bot's update ids at a lower number (it
-- does after a week without updates; a fresh sandbox starts at 1). New updates reuse the old
-- ids, so the old rows from the restart point up move here, where they can no longer shadow a
-- new update as a "duplicate". Kept for inspection; pruned like processed inbox rows.
CREATE TABLE inbox_parked (
    telegram_bot_id BIGINT      NOT NULL,
    update_id       BIGINT      NOT NULL,
    chat_id         BIGINT      NULL,
    payload         JSONB       NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ NULL,
    error           TEXT        NULL,
    parked_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX inbox_parked_bot ON inbox_parked (telegram_bot_id, update_id);
