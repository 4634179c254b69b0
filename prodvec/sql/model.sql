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

-- name: coverage
-- Products holding a vector of the active model (its embedding_model string), and all products.
SELECT count(*) FILTER (WHERE embedding IS NOT NULL AND embedding_model = %(embedding_model)s),
       count(*)
FROM products;
