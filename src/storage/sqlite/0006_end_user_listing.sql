-- Schema version 6: one end user's workflows are listed page by page from an index
-- in id order, rather than by reading every workflow. The end_user_id column has
-- been written with every save since version 1; a row whose body names an end
-- user its column lacks (written by hand, or by a tool of one's own) takes it now.

UPDATE workflows
   SET end_user_id = CASE WHEN json_valid(body) THEN json_extract(body, '$.execution_context.end_user_id') END
 WHERE end_user_id IS NULL AND body LIKE '%"end_user_id":"%';

DROP INDEX workflows_by_end_user;
-- Listing (and erasing) an end user's workflows, in id order.
CREATE INDEX workflows_by_end_user ON workflows (end_user_id, id) WHERE end_user_id IS NOT NULL;
