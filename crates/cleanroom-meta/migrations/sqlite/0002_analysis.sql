-- Analysis policies, versioned: setting a policy adds a version, nothing is updated in place.
CREATE TABLE analysis_policies (
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    version    INTEGER NOT NULL,
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
    epsilon_total     INTEGER NOT NULL,
    delta_total       INTEGER NOT NULL,
    epsilon_per_query INTEGER NOT NULL,
    delta_per_query   INTEGER NOT NULL,
    epsilon_spent     INTEGER NOT NULL DEFAULT 0,
    delta_spent       INTEGER NOT NULL DEFAULT 0,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (collaboration_id, org_id),
    CHECK (epsilon_spent <= epsilon_total AND delta_spent <= delta_total)
);

-- Analyses: SQL queries and template runs. The charges are debited when the analysis is
-- recorded (before any data is read); the result is stored when it is released.
CREATE TABLE analyses (
    id               TEXT PRIMARY KEY,
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
    version     INTEGER NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (dataset_id, template, version)
);
