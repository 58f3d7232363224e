-- Webhook mode (issue 16 item 2). `bots.mode` is 'polling' or 'webhook' (written by
-- `botvisor bot set-mode`); NULL follows the daemon's `telegram.default_mode`. Each bot in
-- webhook mode gets a random secret token, sealed with the master key like the bot's other
-- secrets (associated data: the bot id and the name "telegram.webhook_secret"); the daemon
-- creates it when it first runs the bot in webhook mode, and a token change clears it (a new
-- one is made for the new token: the old bot's webhook secret never serves the new one).
-- `bot_status` gains what getWebhookInfo said last, written by the instance running the bot.
ALTER TABLE bots ADD COLUMN mode TEXT NULL;
ALTER TABLE bots ADD COLUMN webhook_secret_sealed BYTEA NULL;

ALTER TABLE bot_status ADD COLUMN webhook_url TEXT NULL;
ALTER TABLE bot_status ADD COLUMN webhook_pending_update_count BIGINT NULL;
ALTER TABLE bot_status ADD COLUMN webhook_last_error_at TIMESTAMPTZ NULL;
ALTER TABLE bot_status ADD COLUMN webhook_last_error TEXT NULL;
ALTER TABLE bot_status ADD COLUMN webhook_checked_at TIMESTAMPTZ NULL;

CREATE FUNCTION botvisor_bots_rotate_webhook_secret() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.token_hash IS DISTINCT FROM OLD.token_hash
       OR NEW.token_sealed IS DISTINCT FROM OLD.token_sealed
       OR NEW.token IS DISTINCT FROM OLD.token THEN
        NEW.webhook_secret_sealed := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER bots_rotate_webhook_secret
    BEFORE UPDATE ON bots
    FOR EACH ROW EXECUTE FUNCTION botvisor_bots_rotate_webhook_secret();
