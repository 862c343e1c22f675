-- Schema version 7: a workflow a run could not go on with (a stored value it cannot
-- read) is set aside with the reason, rather than only taken off the queue, so that
-- it is listed with why, and keeps its place in the queue for when it is resumed.

ALTER TABLE workflows ADD COLUMN set_aside TEXT;

DROP INDEX workflows_runnable;
-- Finding the longest-waiting runnable workflow.
CREATE INDEX workflows_runnable ON workflows (queued)
    WHERE queued IS NOT NULL AND set_aside IS NULL AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME');
-- Listing the workflows set aside.
CREATE INDEX workflows_set_aside ON workflows (id) WHERE set_aside IS NOT NULL;
