-- The HNSW indexes, dropped and rebuilt around bulk backfills (prodvec/worker/bulk.py): one
-- per vector column, made as migrations/0004_denser_graphs.sql defines them.

-- name: drop_hnsw
DROP INDEX IF EXISTS products_embedding_hnsw;
DROP INDEX IF EXISTS products_embedding_coarse_hnsw;

-- name: create_hnsw
SELECT prodvec_create_vector_indexes();

-- name: halfvec_replaced
-- The binary-code index replaced the photo column's halfvec index (`prodvec quantized-index
-- create --replace-halfvec`): a bulk backfill then rebuilds only the coarse column's.
SELECT to_regclass('products_embedding_bit_hnsw') IS NOT NULL AND to_regclass('products_embedding_hnsw') IS NULL

-- name: create_coarse_hnsw_statement
-- The coarse column's index alone, as prodvec_create_vector_indexes() makes it (migrations/0004).
SELECT format('CREATE INDEX IF NOT EXISTS products_embedding_coarse_hnsw ON products '
              'USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());

-- name: vacuum
-- After a bulk backfill, which rewrote every row it embedded: until a vacuum marks those
-- pages all-visible, an exact pass reads each match's table page, not just the index that
-- carries its vector (migrations/0005); ANALYZE gives the plans fresh counts.
VACUUM (ANALYZE) products;

-- name: index_categories
-- `prodvec category-indexes`: an index per category with enough products, stale ones dropped
-- (prodvec_index_categories() in migrations/0003_category_indexes.sql).
SELECT category, products, index_name, action FROM prodvec_index_categories(%(min_products)s);

-- name: reachability
-- `prodvec index-check`: sampled products searched through the HNSW index (at the session's
-- hnsw.ef_search) with their own vectors. One that does not come back first, at distance 0,
-- lies where no search reaches it: a graph can leave products so on clustered vectors
-- (migrations/0004). Run with enable_seqscan off, so that a small table is searched through
-- the index too rather than sorted.
SELECT count(*) AS searched,
       count(*) FILTER (WHERE nearest.distance <= 1e-5) AS found
FROM (
    SELECT embedding FROM products WHERE embedding IS NOT NULL ORDER BY random() LIMIT %(sample)s
) sampled
CROSS JOIN LATERAL (
    SELECT p.embedding <=> sampled.embedding AS distance
    FROM products p
    ORDER BY p.embedding <=> sampled.embedding
    LIMIT 1
) nearest;
