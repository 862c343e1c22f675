-- Schema version 3: what each journaled LLM call cost, in US dollars.

ALTER TABLE usage ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
