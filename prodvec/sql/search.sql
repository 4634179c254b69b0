-- Similarity search in plain SQL for psycopg (%(name)s placeholders): the recipes README.md
-- and docs/search.md show for psql (with :'q'), run by tests/test_search.py and
-- tests/test_docs.py. %(query)s is a vector (pgvector's HalfVector, or its text form
-- '[0.12,-0.03,...]'), cast to halfvec (the column's type) so the HNSW index applies.

-- name: nearest
-- The k nearest products: the HNSW index answers (approximate, default ef_search = 40).
SELECT id, sku, title, embedding <=> %(query)s::halfvec AS distance
FROM products
ORDER BY embedding <=> %(query)s::halfvec
LIMIT 10

-- name: filtered_settings
-- Before a filtered index query, in the same transaction: keep scanning the index until LIMIT
-- rows pass the filter (or max_scan_tuples index tuples were visited). Relaxed order returns
-- rows roughly by distance, so filtered_nearest sorts them; strict order drops a closer row
-- found after a farther one went out, and loses recall when the search starts off course.
SET LOCAL hnsw.iterative_scan = relaxed_order;
SET LOCAL hnsw.ef_search = 100;
SET LOCAL hnsw.max_scan_tuples = 20000

-- name: filtered_nearest
-- Filtered, through the index: the scan's first k matches, sorted (MATERIALIZED keeps the
-- sort above the scan). Fewer than k rows back means the scan gave up: run filtered_exact.
WITH nearest AS MATERIALIZED (
    SELECT id, sku, title, embedding <=> %(query)s::halfvec AS distance
    FROM products
    WHERE category = %(category)s AND price <= %(max_price)s
    ORDER BY embedding <=> %(query)s::halfvec
    LIMIT 10
)
SELECT * FROM nearest ORDER BY distance + 0

-- name: filtered_exact
-- Filtered, exact and complete: every matching product is compared (the B-trees find them).
-- "+ 0" keeps the planner from using the HNSW index, which would stop after ef_search rows.
SELECT id, sku, title, embedding <=> %(query)s::halfvec AS distance
FROM products
WHERE category = %(category)s AND price <= %(max_price)s AND embedding IS NOT NULL
ORDER BY (embedding <=> %(query)s::halfvec) + 0, id
LIMIT 10

-- name: more_like_sku
-- "More like this": the product's own embedding is the query (one lookup, then the index),
-- the product itself left out. For an unknown or not yet embedded sku the id lookup is NULL,
-- `id <> NULL` holds for no row, and nothing comes back (not rows with NULL distances).
SELECT id, sku, title, embedding <=> (SELECT embedding FROM products WHERE sku = %(sku)s) AS distance
FROM products
WHERE id <> (SELECT id FROM products WHERE sku = %(sku)s AND embedding IS NOT NULL)
ORDER BY embedding <=> (SELECT embedding FROM products WHERE sku = %(sku)s)
LIMIT 10
