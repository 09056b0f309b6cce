-- Console sessions are tokens that expire; API tokens keep NULL and live until revoked.
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
