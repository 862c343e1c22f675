-- Schema version 2: what each journaled LLM call cost, and each workflow's events,
-- numbered in the order they happened (`body` is the event's JSON).

ALTER TABLE {S}.usage ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0;

CREATE TABLE {S}.events (
    workflow_id text NOT NULL REFERENCES {S}.workflows (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    body        text NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
