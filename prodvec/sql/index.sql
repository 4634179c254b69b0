-- The HNSW indexes, dropped and rebuilt around bulk backfills (prodvec/worker/bulk.py): one
-- per vector column. Their definitions are the ones in migrations/0001_products.sql and
-- migrations/0002_catalog_views.sql.

-- name: drop_hnsw
DROP INDEX IF EXISTS products_embedding_hnsw;
DROP INDEX IF EXISTS products_embedding_coarse_hnsw;

-- name: create_hnsw
CREATE INDEX IF NOT EXISTS products_embedding_hnsw ON products USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
CREATE INDEX IF NOT EXISTS products_embedding_coarse_hnsw ON products USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);

-- name: index_categories
-- `prodvec category-indexes`: an index per category with enough products, stale ones dropped
-- (prodvec_index_categories() in migrations/0003_category_indexes.sql).
SELECT category, products, index_name, action FROM prodvec_index_categories(%(min_products)s);
