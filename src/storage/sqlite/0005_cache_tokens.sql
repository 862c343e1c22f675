-- Schema version 5: how many of each journaled call's prompt tokens the provider
-- read from, and wrote to, its prompt cache (both already in prompt_tokens).

ALTER TABLE usage ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
