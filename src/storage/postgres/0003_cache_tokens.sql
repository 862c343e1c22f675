-- Schema version 3: how many of each journaled call's prompt tokens the provider
-- read from, and wrote to, its prompt cache (both already in prompt_tokens).

ALTER TABLE {S}.usage ADD COLUMN cache_read_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE {S}.usage ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0;
