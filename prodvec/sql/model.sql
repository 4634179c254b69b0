-- Queries on the catalog's active model (migrations/0007_active_model.sql).

-- name: has_record
-- Whether the schema has the active model's table (migration 0007): asked first, so that a
-- search on an older schema does not abort the caller's transaction with a missing table.
SELECT to_regclass('active_model') IS NOT NULL;

-- name: read
SELECT spec, dimensions, catalog_views FROM active_model;

-- name: record
-- The function checks, resizes, drops and requeues in one transaction (see the migration).
SELECT prodvec_set_active_model(%(spec)s, %(dimensions)s, %(catalog_views)s, %(drop_embeddings)s);

-- name: is_kept
-- A model kept beside the active one (migrations/0009), e.g. the one active before.
SELECT 1 FROM embedding_models WHERE spec = %(spec)s AND catalog_views = %(catalog_views)s AND NOT active;

-- name: has_models
-- Whether the schema has migration 0009's table of models.
SELECT to_regclass('embedding_models') IS NOT NULL;

-- name: models
-- Every model of the catalog, the active one first (prodvec.db.model_registry.CatalogModel).
SELECT id, spec, dimensions, catalog_views, active, added_at, activated_at, deactivated_at
FROM embedding_models
ORDER BY active DESC, id;

-- name: progress
-- One model's progress: products with a vector of it ({embedding}: its vector column), its jobs
-- waiting and failed, and what it lacks before it can take over (prodvec_model_behind()).
SELECT (SELECT count(*) FROM products WHERE {embedding} IS NOT NULL),
       count(*) FILTER (WHERE state = 'pending'),
       count(*) FILTER (WHERE state = 'failed'),
       prodvec_model_behind(%(model_id)s::smallint)
FROM embedding_jobs
WHERE model_id = %(model_id)s;

-- name: add
-- The short first step of `prodvec model add` (migrations/0009): its row, columns, recall settings.
SELECT prodvec_add_model(%(spec)s, %(dimensions)s, %(catalog_views)s);

-- name: index_statements
-- The CREATE INDEX CONCURRENTLY statements the added model's columns need, to run one by one.
SELECT prodvec_model_index_statements(%(model_id)s::smallint);

-- name: queue_backfill
SELECT prodvec_queue_backfill(%(model_id)s::smallint);

-- name: activate
-- The switch: columns, indexes and recall settings swap names (waits for searches in flight).
SELECT prodvec_activate_model(%(model_id)s::smallint);

-- name: drop
SELECT prodvec_drop_model(%(model_id)s::smallint);
