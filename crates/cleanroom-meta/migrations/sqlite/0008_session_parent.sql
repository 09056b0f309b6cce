-- A console session names the API token it was started with; revoking that token ends it.
ALTER TABLE tokens ADD COLUMN parent_id TEXT REFERENCES tokens(id);
CREATE INDEX tokens_parent ON tokens(parent_id) WHERE parent_id IS NOT NULL;
