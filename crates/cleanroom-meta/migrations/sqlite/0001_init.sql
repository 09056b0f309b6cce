-- Parties, people and their API tokens. Tokens keep only a SHA-256 of their secret.
CREATE TABLE organisations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    is_operator INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organisations(id),
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TEXT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    label       TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX tokens_by_user ON tokens(user_id);

-- Collaborations and who is in them. wrapped_key is NULL once the collaboration is closed
-- (crypto-shredded).
CREATE TABLE collaborations (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL,
    creator_org_id TEXT NOT NULL REFERENCES organisations(id),
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    wrapped_key    BLOB,
    created_at     TEXT NOT NULL,
    closed_at      TEXT,
    UNIQUE (creator_org_id, name)
);

CREATE TABLE memberships (
    collaboration_id TEXT NOT NULL REFERENCES collaborations(id),
    org_id           TEXT NOT NULL REFERENCES organisations(id),
    abilities        INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('invited', 'active', 'declined')),
    invited_at       TEXT NOT NULL,
    joined_at        TEXT,
    PRIMARY KEY (collaboration_id, org_id)
);
CREATE INDEX memberships_by_org ON memberships(org_id);

-- Dataset metadata; rows live encrypted in the data directory. wrapped_key is NULL once shredded.
CREATE TABLE datasets (
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
    UNIQUE (collaboration_id, name)
);

-- The audit chains: one per collaboration, plus 'system'. audit_heads is updated in the same
-- transaction as every append so that entries cut off the end are detected.
CREATE TABLE audit_entries (
    chain     TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);

-- Server-wide settings, e.g. a value wrapped by the master key that proves at start-up that the
-- configured master key is the one this data directory was created with.
CREATE TABLE server_settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
