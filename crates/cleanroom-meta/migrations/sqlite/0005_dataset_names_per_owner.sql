-- no-transaction
-- Dataset names are unique per owner within a collaboration, not across owners: a member's
-- pending (or uploading) declaration is private to it, and a name clash with it must not tell
-- another member that it exists. Among the datasets every member sees (ready, shredded) a name
-- stays unique: the store checks that when a dataset becomes ready.
--
-- SQLite cannot drop a table constraint, so the table is rebuilt (the documented twelve-step
-- procedure: foreign keys off, copy, drop, rename, check, foreign keys on).
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE datasets_new (
    id               TEXT PRIMARY KEY,
    collaboration_id TEXT NOT NULL REFERENCES collaborations(id),
    owner_org_id     TEXT NOT NULL REFERENCES organisations(id),
    name             TEXT NOT NULL,
    schema           TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'uploading', 'ready', 'shredded')),
    wrapped_key      BLOB,
    row_count        INTEGER,
    byte_size        INTEGER,
    created_at       TEXT NOT NULL,
    ready_at         TEXT,
    UNIQUE (collaboration_id, owner_org_id, name)
);
INSERT INTO datasets_new SELECT id, collaboration_id, owner_org_id, name, schema, status,
    wrapped_key, row_count, byte_size, created_at, ready_at FROM datasets;
DROP TABLE datasets;
ALTER TABLE datasets_new RENAME TO datasets;
CREATE INDEX datasets_by_name ON datasets(collaboration_id, name);
COMMIT;
PRAGMA foreign_key_check;
PRAGMA foreign_keys = ON;
