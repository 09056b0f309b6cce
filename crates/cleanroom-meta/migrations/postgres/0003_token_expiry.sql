-- Console sessions are tokens that expire (as SQLite's 0007); API tokens keep NULL and live
-- until revoked.
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
