-- Server replicas (as SQLite's 0006) and what each has under way, so that work a crashed replica left (an upload,
-- a running analysis, a claimed activation) is recovered once, by another replica or at the
-- next start, and never while its replica is alive. A replica writes its heartbeat every few
-- seconds; one whose heartbeat is older than the lease is dead.
CREATE TABLE server_replicas (
    id           TEXT PRIMARY KEY,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
ALTER TABLE datasets ADD COLUMN upload_replica TEXT;
ALTER TABLE analyses ADD COLUMN replica TEXT;
ALTER TABLE activations ADD COLUMN replica TEXT;
