-- The HNSW index, dropped and rebuilt around bulk backfills (prodvec/worker/bulk.py).
-- Its definition is the one in migrations/0001_products.sql.

-- name: drop_hnsw
DROP INDEX IF EXISTS products_embedding_hnsw;

-- name: create_hnsw
CREATE INDEX IF NOT EXISTS products_embedding_hnsw ON products USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
