-- The statements behind Product.similar_to (prodvec/search/execute.py and plan.py).
-- Placeholders are psycopg's: %(query)s is the query vector (halfvec), %(exclude_id)s the
-- query product's id or NULL. Slots in braces are filled in by prodvec: {filters} the
-- caller's WHERE clauses compiled by SQLAlchemy (with their own %(...)s parameters),
-- {columns} the product columns to load, {vector_column} the vector column searched (embedding, or
-- embedding_coarse: a multi-view catalog's coarse view, with its own HNSW index), and LIMITs
-- as literals: a generic plan (psycopg prepares statements it sees often) with an unknown
-- LIMIT may not use the HNSW index at all.

-- name: estimate
-- How many products the planner expects the filter to keep (EXPLAIN: nothing runs).
-- It counts products with an embedding, whichever column is searched: under multi, the worker
-- writes both vectors of a product at once.
EXPLAIN (FORMAT JSON)
SELECT 1 FROM products
WHERE embedding IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})

-- name: exact
-- Exact: the distance to every product the filter keeps (the B-trees find them), top k.
-- Ranked on (id, distance) alone, the k winners joined back for their columns: projecting
-- every column of every match cost a quarter more at ~1,000 matches (of 100k rows).
-- "+ 0": the planner cannot hand this order to the HNSW index, which stops after
-- ef_search candidates.
SELECT {columns}, distance
FROM (
    SELECT id, {vector_column} <=> %(query)s AS distance
    FROM products
    WHERE {vector_column} IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})
    ORDER BY ({vector_column} <=> %(query)s) + 0, id
    LIMIT {k}
) nearest
JOIN products USING (id)
ORDER BY distance, id

-- name: exact_capped
-- Exact as above, but the scan stops after {cap_plus_one} matching products; "kept" (the
-- same on every row) says how many it saw, so more than the cap means it did not see all.
SELECT {columns}, distance, kept
FROM (
    SELECT id, distance, count(*) OVER () AS kept
    FROM (
        SELECT id, {vector_column} <=> %(query)s AS distance
        FROM products
        WHERE {vector_column} IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})
        LIMIT {cap_plus_one}
    ) matching
    ORDER BY distance + 0, id
    LIMIT {k}
) nearest
JOIN products USING (id)
ORDER BY distance, id

-- name: index_settings
-- Before an index pass, inside a savepoint that is rolled back after it: the iterative
-- scan (or none), its candidate list and its budget. Custom plans always: a generic plan
-- (psycopg prepares statements it runs often) cannot use a per-category index, whose
-- predicate only matches a category value known at planning.
SELECT set_config('hnsw.iterative_scan', %(iterative_scan)s, true),
       set_config('hnsw.ef_search', %(ef_search)s, true),
       set_config('hnsw.max_scan_tuples', %(max_scan_tuples)s, true),
       set_config('plan_cache_mode', 'force_custom_plan', true)

-- name: pin_model
-- First in a search's transaction: the active model, fixed until the transaction ends
-- (prodvec_pin_active_model() in migrations/0009_model_versions.sql).
SELECT id, spec, catalog_views FROM prodvec_pin_active_model()

-- name: table_facts
-- What plans are sized by (prodvec/search/plan.py, cached): products with an embedding as the
-- planner estimates them (reltuples is -1 before the first VACUUM or ANALYZE), the vector
-- column's dimensions, the per-category indexes (migrations/0003): category (the index's
-- comment) → products it holds, the most common categories' shares of the products,
-- whether the (category, price) index carries the vectors (migrations/0005), and the width of
-- the binary codes when the code index exists (migrations/0008), else NULL.
SELECT c.reltuples * (1 - coalesce(s.null_frac, 0)) AS indexed_rows,
       a.atttypmod AS dimensions,
       (SELECT coalesce(json_object_agg(obj_description(x.indexrelid, 'pg_class'), ic.reltuples), '{}')
        FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
        WHERE x.indrelid = c.oid AND starts_with(ic.relname, 'products_embedding_hnsw_c_')
          AND obj_description(x.indexrelid, 'pg_class') IS NOT NULL) AS category_indexes,
       (SELECT coalesce(json_object_agg(common.category, common.share), '{}')
        FROM unnest(cs.most_common_vals::text::text[], cs.most_common_freqs) AS common (category, share)
       ) AS category_shares,
       coalesce(prodvec_filter_index_carries_vectors(), false) AS vectors_in_filter_index,
       (SELECT ca.atttypmod FROM pg_attribute ca
        WHERE ca.attrelid = to_regclass('products_embedding_bit_hnsw') AND ca.attnum = 1) AS code_dimensions
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'embedding'
LEFT JOIN pg_stats s ON s.schemaname = c.relnamespace::regnamespace::text
                    AND s.tablename = c.relname AND s.attname = 'embedding'
LEFT JOIN pg_stats cs ON cs.schemaname = c.relnamespace::regnamespace::text
                     AND cs.tablename = c.relname AND cs.attname = 'category'
WHERE c.oid = 'products'::regclass

-- name: index
-- Through the HNSW index: its first k matches (the first search alone, or the iterative scan,
-- whose relaxed order returns them only roughly by distance). The materialized CTE keeps the
-- final sort (ties by id) out of the index scan; "+ 0" makes that sort real (PostgreSQL 17+
-- would trust the CTE's ORDER BY, pgvector#862).
WITH nearest AS MATERIALIZED (
    SELECT {columns}, {vector_column} <=> %(query)s AS distance
    FROM products
    WHERE {vector_column} IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})
    ORDER BY {vector_column} <=> %(query)s
    LIMIT {k}
)
SELECT *
FROM nearest
ORDER BY distance + 0, id

-- name: index_codes
-- Through the binary-code index (migrations/0008, prodvec/search/quantized.py), in two
-- stages: the {candidates} matching products nearest to the query's code by Hamming distance
-- (through the index; with a filter, its iterative scan), then their exact distances, top k.
-- {dimensions} is the codes' width, as the index casts them. "kept" (the same on every row)
-- says how many candidates the index gave: fewer than asked means its scan gave up (or fewer
-- products match), so the re-rank cannot be trusted and the exact pass answers.
SELECT {columns}, distance, kept
FROM (
    SELECT id, distance, count(*) OVER () AS kept
    FROM (
        SELECT id, {vector_column} <=> %(query)s AS distance
        FROM products
        WHERE {vector_column} IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})
        ORDER BY prodvec_binary_code({vector_column})::bit({dimensions})
                 <~> prodvec_binary_code(%(query)s)::bit({dimensions})
        LIMIT {candidates}
    ) candidates
    ORDER BY distance + 0, id
    LIMIT {k}
) nearest
JOIN products USING (id)
ORDER BY distance, id

-- name: why_not_embedded
-- A query product without a vector (a sku search, "more like this"): its photo, and the state
-- and last error of its job for the active model, to say why.
SELECT p.image, j.state, j.last_error
FROM products AS p
LEFT JOIN embedding_jobs AS j ON j.product_id = p.id AND j.model_id = (SELECT id FROM active_model)
WHERE p.id = %(product_id)s
