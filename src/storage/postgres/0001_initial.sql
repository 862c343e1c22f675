-- Schema version 1 of the Postgres store: the tables of SQLite's schema 2, in the
-- schema {S}. JSON bodies are TEXT holding the crate's serde shapes, so a body reads
-- back byte for byte (JSONB would reorder keys and refuse \u0000); the other columns
-- copy what queries filter on, and the lease columns hold a `LeaseState`.

CREATE TABLE {S}.plans (
    id   text PRIMARY KEY,
    body text NOT NULL
);

-- Submission order of the queue.
CREATE SEQUENCE {S}.submissions;

CREATE TABLE {S}.workflows (
    id               text PRIMARY KEY,
    plan_id          text NOT NULL,
    state            text NOT NULL,
    version          bigint NOT NULL,
    end_user_id      text,
    body             text NOT NULL,
    lease_owner      text,
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    attempts         bigint NOT NULL DEFAULT 0,
    cancel_requested text,
    updated_at       timestamptz NOT NULL,
    -- Submission order of a workflow submitted for the workers, NULL for one run in
    -- the process that created it.
    queued           bigint
);

-- Listing by state in id order.
CREATE INDEX workflows_by_state ON {S}.workflows (state, id);
-- Deleting a plan once no workflow uses it.
CREATE INDEX workflows_by_plan ON {S}.workflows (plan_id);
-- Erasing an end user's data.
CREATE INDEX workflows_by_end_user ON {S}.workflows (end_user_id) WHERE end_user_id IS NOT NULL;
-- Pruning finished workflows by age.
CREATE INDEX workflows_finished ON {S}.workflows (updated_at) WHERE state IN ('COMPLETE', 'FAILED');
-- Finding the longest-waiting runnable workflow.
CREATE INDEX workflows_runnable ON {S}.workflows (queued)
    WHERE queued IS NOT NULL AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME');

-- started_at is RFC 3339 text, so a record reads back exactly as it was written.
CREATE TABLE {S}.tool_calls (
    workflow_id     text NOT NULL REFERENCES {S}.workflows (id) ON DELETE CASCADE,
    step            bigint NOT NULL,
    attempt         bigint NOT NULL,
    seq             bigint NOT NULL,
    tool_id         text NOT NULL,
    end_user_id     text,
    input           text NOT NULL,
    status          text NOT NULL,
    output          text NOT NULL,
    started_at      text NOT NULL,
    latency_seconds double precision,
    PRIMARY KEY (workflow_id, step, attempt, seq)
);

CREATE TABLE {S}.usage (
    seq               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id       text NOT NULL REFERENCES {S}.workflows (id) ON DELETE CASCADE,
    step_output       text,
    llm_calls         bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL
);

CREATE INDEX usage_by_workflow ON {S}.usage (workflow_id, seq);
