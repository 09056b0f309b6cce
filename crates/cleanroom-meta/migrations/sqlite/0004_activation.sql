-- Activations: a partner asks to receive the matched segment of an owner's dataset as its own
-- record identifiers. The owner approves or rejects; an approval is used by exactly one
-- download. Status only moves forward, each move one conditional UPDATE (so two racing
-- downloads cannot both use an approval):
--   pending -> approved | rejected;  approved -> consumed;  consumed -> delivered | too_small | failed
CREATE TABLE activations (
    id                TEXT PRIMARY KEY,
    collaboration_id  TEXT NOT NULL REFERENCES collaborations(id),
    org_id            TEXT NOT NULL REFERENCES organisations(id),
    actor             TEXT NOT NULL,
    source_dataset_id TEXT NOT NULL REFERENCES datasets(id),
    target_dataset_id TEXT NOT NULL REFERENCES datasets(id),
    request           TEXT NOT NULL,
    policy_version    INTEGER NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                        ('pending', 'approved', 'rejected', 'consumed', 'delivered', 'too_small', 'failed')),
    decided_by        TEXT,
    decided_at        TEXT,
    delivered         INTEGER,
    created_at        TEXT NOT NULL,
    finished_at       TEXT
);
CREATE INDEX activations_by_collaboration ON activations(collaboration_id, created_at);
