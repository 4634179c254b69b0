-- The HNSW indexes, dropped and rebuilt around bulk backfills (prodvec/worker/bulk.py): one
-- per vector column, made as migrations/0004_denser_graphs.sql defines them.

-- name: drop_hnsw
DROP INDEX IF EXISTS products_embedding_hnsw;
DROP INDEX IF EXISTS products_embedding_coarse_hnsw;

-- name: create_hnsw
SELECT prodvec_create_vector_indexes();

-- name: index_categories
-- `prodvec category-indexes`: an index per category with enough products, stale ones dropped
-- (prodvec_index_categories() in migrations/0003_category_indexes.sql).
SELECT category, products, index_name, action FROM prodvec_index_categories(%(min_products)s);
