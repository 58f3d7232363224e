-- Bot databases on several PostgreSQL servers (issue 16 item 4). `bots.db_server` records
-- the server a bot's database lives on, as `postgres://user@host:port` — never a password:
-- the daemon matches it against `bot_database.servers` (by user, host and port) and takes the
-- password from the settings. NULL: the first configured server, which is where every bot
-- registered before this column lived, so older binaries (which ignore the column) keep
-- finding them. Written when a bot is added (placement) and by `botvisor bot move`.
ALTER TABLE bots ADD COLUMN db_server TEXT NULL;
