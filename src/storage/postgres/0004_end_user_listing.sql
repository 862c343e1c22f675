-- Schema version 4: one end user's workflows are listed page by page from an index
-- in id order, rather than by reading every workflow. The end_user_id column has
-- been written with every save since version 1; a row whose body names an end
-- user its column lacks (written by hand, or by a tool of one's own) takes it now.
-- The body is read as json, not jsonb, which would refuse a \u0000 elsewhere in it.

UPDATE {S}.workflows
   SET end_user_id = body::json -> 'execution_context' ->> 'end_user_id'
 WHERE end_user_id IS NULL AND body LIKE '%"end_user_id":"%';

DROP INDEX {S}.workflows_by_end_user;
-- Listing (and erasing) an end user's workflows, in id order.
CREATE INDEX workflows_by_end_user ON {S}.workflows (end_user_id, id) WHERE end_user_id IS NOT NULL;
