-- Schema version 4: each workflow's events, numbered in the order they happened.
-- `body` is the event's JSON.

CREATE TABLE events (
    workflow_id TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
) STRICT;
