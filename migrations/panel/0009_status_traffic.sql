-- Traffic per bot, as its owner last counted it: updates handled and messages Telegram
-- accepted over the latest interval (`supervisor.traffic_interval_secs`), scaled to a
-- minute. Written by the owning instance only when the figures change, so idle bots cost no
-- writes; read by the web panel's overview (no bot database is opened for the list).
ALTER TABLE bot_status
    ADD COLUMN updates_per_min INTEGER NULL,
    ADD COLUMN sent_per_min    INTEGER NULL,
    ADD COLUMN traffic_at      TIMESTAMPTZ NULL;
