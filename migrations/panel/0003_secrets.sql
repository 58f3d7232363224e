-- Per-bot named secrets (an assistant's API key, …), sealed with the master key
-- (XChaCha20-Poly1305; associated data: the bot id and the name, so a value copied to another
-- row does not open). `sealed` holds [format, key id, nonce, ciphertext + tag]; nothing here is
-- readable without the key file. A write notifies `reload_config` like a text does, so a
-- running bot sees the new value in its content snapshot.
CREATE TABLE bot_secrets (
    bot_id      BIGINT      NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    name        TEXT        NOT NULL,
    sealed      BYTEA       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, name)
);

CREATE FUNCTION botvisor_bot_secrets_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('reload_config', OLD.bot_id::text);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    PERFORM pg_notify('reload_config', NEW.bot_id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER bot_secrets_notify
    BEFORE INSERT OR UPDATE OR DELETE ON bot_secrets
    FOR EACH ROW EXECUTE FUNCTION botvisor_bot_secrets_notify();
