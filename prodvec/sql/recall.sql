-- Measured recall and tuned effort per kind of index search (migrations/0006):
-- read by searches (prodvec/search/effort.py), written by `prodvec recall` (prodvec/recall/).

-- name: bands
-- Each kind's distance bands, nearest first: searches size their index pass by them and
-- report the recall measured in the band their query falls in.
SELECT kind, band, max_distance, ef_search, recall, target
FROM prodvec_recall_settings
ORDER BY kind, band

-- name: report
-- What `prodvec recall --watch` exports and checks, and `prodvec recall --show` prints.
SELECT kind, band, max_distance, ef_search, recall, worst_decile, queries, target, products, measured_at
FROM prodvec_recall_settings
ORDER BY kind, band

-- name: forget_kind
-- A tuning replaces a kind's bands (their number and edges may change).
DELETE FROM prodvec_recall_settings WHERE kind = %(kind)s

-- name: save_band
-- One band's effort and what was measured at it; re-measuring keeps the effort and edges.
INSERT INTO prodvec_recall_settings
    (kind, band, max_distance, ef_search, recall, worst_decile, queries, target, products)
VALUES (%(kind)s, %(band)s, %(max_distance)s, %(ef_search)s, %(recall)s, %(worst_decile)s, %(queries)s,
        %(target)s, %(products)s)
ON CONFLICT (kind, band) DO UPDATE
SET recall = excluded.recall, worst_decile = excluded.worst_decile, queries = excluded.queries,
    products = excluded.products, measured_at = now()

-- name: embedded_products
-- Products with an embedding now, as the planner estimates them (no count(*) over 1M rows):
-- the watch re-measures when this grew by a share since the last measurement.
SELECT greatest(c.reltuples, 0) * (1 - coalesce(s.null_frac, 0))
FROM pg_class c
LEFT JOIN pg_stats s ON s.schemaname = c.relnamespace::regnamespace::text
                    AND s.tablename = c.relname AND s.attname = 'embedding'
WHERE c.oid = 'products'::regclass

-- name: sample_products
-- Products whose vectors make the sample's queries (as they are, "more like this", or moved
-- away from the catalog), in a random order that setseed() makes repeatable.
SELECT id, embedding, category, price
FROM products
WHERE embedding IS NOT NULL
ORDER BY random()
LIMIT %(limit)s

-- name: set_seed
SELECT setseed(%(seed)s)

-- name: price_quantiles
-- The price quartiles of the embedded products, or of one category's (%(category)s not NULL):
-- the sample's filters keep half the catalog, or half a category.
SELECT percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY price)
FROM products
WHERE embedding IS NOT NULL AND price IS NOT NULL
  AND (%(category)s::text IS NULL OR category = %(category)s::text)

-- name: database_default_statement
-- `prodvec recall --tune --database-default`: the statement that gives new sessions of this
-- database the tuned candidate list (plain SQL queries; prodvec sets its own per query).
SELECT format('ALTER DATABASE %I SET hnsw.ef_search = %s', current_database(), %(ef_search)s::integer)
