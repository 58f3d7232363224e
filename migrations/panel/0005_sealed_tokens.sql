-- Bot tokens at rest: sealed with the master key (XChaCha20-Poly1305, associated data: the bot
-- id) in `token_sealed`, unique through `token_hash` (HMAC-SHA256 under a key derived from the
-- master key). `botvisor migrate` (and the daemon at start) seals every clear `token` and
-- empties it (NULL); the column stays for one version so that rows written by an older
-- binary or by hand are still read and then sealed (docs/security.md, "One-version window").
ALTER TABLE bots ADD COLUMN token_sealed BYTEA NULL;
ALTER TABLE bots ADD COLUMN token_hash BYTEA NULL;
ALTER TABLE bots ALTER COLUMN token DROP NOT NULL;
-- botvisor: allow index-not-concurrent the panel's bots table holds at most a few thousand rows; building the index takes milliseconds under the lock
CREATE UNIQUE INDEX bots_token_hash_key ON bots (token_hash);
