-- Several instances share a panel (issue 16): each bot is owned by one instance through a
-- session advisory lock held on that instance's control connection. The instance records
-- which backend that connection is (pid + start time), so the others see at once, through
-- pg_stat_activity, when it ends (kill -9, lost network), without waiting for the heartbeat to
-- go stale; and how many bots it owns, for `botvisor status`.
ALTER TABLE instances ADD COLUMN control_pid INTEGER;
ALTER TABLE instances ADD COLUMN control_started_at TIMESTAMPTZ;
ALTER TABLE instances ADD COLUMN bots_owned INTEGER NOT NULL DEFAULT 0;
