-- Schema version 2: the queue the workers take workflows from. `queued` is the
-- submission order of a workflow submitted for the workers, NULL for one that is run
-- in the process that created it.

ALTER TABLE workflows ADD COLUMN queued INTEGER;

-- Finding the longest-waiting runnable workflow.
CREATE INDEX workflows_runnable ON workflows (queued)
    WHERE queued IS NOT NULL AND state IN ('NOT_STARTED', 'IN_PROGRESS', 'READY_TO_RESUME');
