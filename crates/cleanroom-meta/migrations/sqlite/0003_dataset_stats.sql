-- Exact row multiplicities of a dataset (rows per person, rows per identifier value), computed
-- once at its first analysis. Datasets never change after upload, so neither do these. They
-- stay inside the server: no endpoint returns them.
CREATE TABLE dataset_stats (
    dataset_id  TEXT PRIMARY KEY REFERENCES datasets(id),
    stats       TEXT NOT NULL,
    computed_at TEXT NOT NULL
);
