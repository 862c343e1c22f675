-- Schema version 1. JSON bodies keep the crate's serde shapes; the other columns
-- copy what queries filter on, and the lease columns hold a `LeaseState`.
-- Times are milliseconds since the Unix epoch unless noted.

CREATE TABLE plans (
    id   TEXT PRIMARY KEY NOT NULL,
    body TEXT NOT NULL
) STRICT;

CREATE TABLE workflows (
    id               TEXT PRIMARY KEY NOT NULL,
    plan_id          TEXT NOT NULL,
    state            TEXT NOT NULL,
    version          INTEGER NOT NULL,
    end_user_id      TEXT,
    body             TEXT NOT NULL,
    lease_owner      TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,
    updated_at       INTEGER NOT NULL
) STRICT;

-- Listing by state in id order, and finding runnable workflows.
CREATE INDEX workflows_by_state ON workflows (state, id);
-- Deleting a plan once no workflow uses it.
CREATE INDEX workflows_by_plan ON workflows (plan_id);
-- Erasing an end user's data.
CREATE INDEX workflows_by_end_user ON workflows (end_user_id) WHERE end_user_id IS NOT NULL;
-- Pruning finished workflows by age.
CREATE INDEX workflows_finished ON workflows (updated_at) WHERE state IN ('COMPLETE', 'FAILED');

-- started_at is RFC 3339 text, so a record reads back exactly as it was written.
CREATE TABLE tool_calls (
    workflow_id     TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step            INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    tool_id         TEXT NOT NULL,
    end_user_id     TEXT,
    input           TEXT NOT NULL,
    status          TEXT NOT NULL,
    output          TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    latency_seconds REAL,
    PRIMARY KEY (workflow_id, step, attempt, seq)
) STRICT;

CREATE TABLE usage (
    seq               INTEGER PRIMARY KEY,
    workflow_id       TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step_output       TEXT,
    llm_calls         INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
) STRICT;

CREATE INDEX usage_by_workflow ON usage (workflow_id, seq);
