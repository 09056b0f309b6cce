-- The metadata store on PostgreSQL: the same tables as the SQLite migrations 0001-0005 reach,
-- in one step (there is no PostgreSQL room to upgrade from). Times stay TEXT (RFC 3339 with
-- milliseconds, written by the store, so they sort as text); integers are BIGINT (what the
-- store binds); bytes are BYTEA. Columns that lists are ordered by compare bytewise
-- (COLLATE "C"), as SQLite does, whatever the database's collation.
--
-- Beyond SQLite's schema, two invariants that SQLite's single writer kept are constraints
-- here, so that no interleaving of transactions can break them: at most one operator
-- organisation, and at most one dataset of a name that every member sees (ready or shredded)
-- per collaboration.

-- Parties, people and their API tokens. Tokens keep only a SHA-256 of their secret.
CREATE TABLE organisations (
    id          TEXT PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    is_operator BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX organisations_one_operator ON organisations (is_operator) WHERE is_operator;

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES organisations(id),
    name       TEXT COLLATE "C" NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TEXT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    label       TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX tokens_by_user ON tokens(user_id);

-- Collaborations and who is in them. wrapped_key is NULL once the collaboration is closed
-- (crypto-shredded).
CREATE TABLE collaborations (
    id             TEXT PRIMARY KEY,
    name           TEXT COLLATE "C" NOT NULL,
    description    TEXT NOT NULL,
    creator_org_id TEXT NOT NULL REFERENCES organisations(id),
    status         TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    wrapped_key    BYTEA,
    created_at     TEXT NOT NULL,
    closed_at      TEXT,
    UNIQUE (creator_org_id, name)
);

CREATE TABLE memberships (
    collaboration_id TEXT NOT NULL REFERENCES collaborations(id),
    org_id           TEXT NOT NULL REFERENCES organisations(id),
    abilities        BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('invited', 'active', 'declined')),
    invited_at       TEXT NOT NULL,
    joined_at        TEXT,
    PRIMARY KEY (collaboration_id, org_id)
);
CREATE INDEX memberships_by_org ON memberships(org_id);

-- Dataset metadata; rows live encrypted in the data store. wrapped_key is NULL once shredded.
-- Names are unique per owner within a collaboration (a member's pending declaration is
-- private to it), and unique among the datasets every member sees.
CREATE TABLE datasets (
    id               TEXT PRIMARY KEY,
    collaboration_id TEXT NOT NULL REFERENCES collaborations(id),
    owner_org_id     TEXT NOT NULL REFERENCES organisations(id),
    name             TEXT COLLATE "C" NOT NULL,
    schema           TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'uploading', 'ready', 'shredded')),
    wrapped_key      BYTEA,
    row_count        BIGINT,
    byte_size        BIGINT,
    created_at       TEXT NOT NULL,
    ready_at         TEXT,
    UNIQUE (collaboration_id, owner_org_id, name)
);
CREATE INDEX datasets_by_name ON datasets(collaboration_id, name);
CREATE UNIQUE INDEX datasets_visible_name ON datasets(collaboration_id, name)
    WHERE status IN ('ready', 'shredded');

-- The audit chains: one per collaboration, plus 'system'. audit_heads is updated in the same
-- transaction as every append so that entries cut off the end are detected. Appends to one
-- chain are serialised by a transaction-scoped advisory lock (see src/postgres.rs).
CREATE TABLE audit_entries (
    chain     TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  BYTEA NOT NULL
);

-- Server-wide settings, e.g. a value wrapped by the master key that proves at start-up that the
-- configured master key is the one this room was created with.
CREATE TABLE server_settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Analysis policies, versioned: setting a policy adds a version, nothing is updated in place.
CREATE TABLE analysis_policies (
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    version    BIGINT NOT NULL,
    policy     TEXT NOT NULL,
    set_by     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, version)
);

-- Each organisation's privacy ledger for one collaboration, in integer units (epsilon x 1e9,
-- delta x 1e18). Spending only grows; totals only grow, by explicit grants.
CREATE TABLE privacy_ledgers (
    collaboration_id  TEXT NOT NULL REFERENCES collaborations(id),
    org_id            TEXT NOT NULL REFERENCES organisations(id),
    epsilon_total     BIGINT NOT NULL,
    delta_total       BIGINT NOT NULL,
    epsilon_per_query BIGINT NOT NULL,
    delta_per_query   BIGINT NOT NULL,
    epsilon_spent     BIGINT NOT NULL DEFAULT 0,
    delta_spent       BIGINT NOT NULL DEFAULT 0,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (collaboration_id, org_id),
    CHECK (epsilon_spent <= epsilon_total AND delta_spent <= delta_total)
);

-- Analyses: SQL queries and template runs. The charges are debited when the analysis is
-- recorded (before any data is read); the result is stored when it is released.
CREATE TABLE analyses (
    id               TEXT COLLATE "C" PRIMARY KEY,
    collaboration_id TEXT NOT NULL REFERENCES collaborations(id),
    org_id           TEXT NOT NULL REFERENCES organisations(id),
    actor            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    request          TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    receivers        TEXT NOT NULL,
    charges          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'released', 'failed')),
    result           TEXT,
    error            TEXT,
    reused_from      TEXT,
    created_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX analyses_by_fingerprint ON analyses(collaboration_id, fingerprint, status);

-- Owners' approvals of ready-made analyses, tied to the exact template version.
CREATE TABLE template_approvals (
    dataset_id  TEXT NOT NULL REFERENCES datasets(id),
    template    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, template, version)
);

-- Exact row multiplicities of a dataset, computed once at its first analysis. They stay
-- inside the server: no endpoint returns them.
CREATE TABLE dataset_stats (
    dataset_id  TEXT PRIMARY KEY REFERENCES datasets(id),
    stats       TEXT NOT NULL,
    computed_at TEXT NOT NULL
);

-- Activations: a partner asks to receive the matched segment of an owner's dataset as its own
-- record identifiers. Status only moves forward, each move one compare-and-set UPDATE:
--   pending -> approved | rejected;  approved -> consumed;  consumed -> delivered | too_small | failed
CREATE TABLE activations (
    id                TEXT COLLATE "C" PRIMARY KEY,
    collaboration_id  TEXT NOT NULL REFERENCES collaborations(id),
    org_id            TEXT NOT NULL REFERENCES organisations(id),
    actor             TEXT NOT NULL,
    source_dataset_id TEXT NOT NULL REFERENCES datasets(id),
    target_dataset_id TEXT NOT NULL REFERENCES datasets(id),
    request           TEXT NOT NULL,
    policy_version    BIGINT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                        ('pending', 'approved', 'rejected', 'consumed', 'delivered', 'too_small', 'failed')),
    decided_by        TEXT,
    decided_at        TEXT,
    delivered         BIGINT,
    created_at        TEXT NOT NULL,
    finished_at       TEXT
);
CREATE INDEX activations_by_collaboration ON activations(collaboration_id, created_at);
