-- `prodvec quantized-index` (prodvec/db/quantized_index.py): the opt-in binary-code index of
-- migrations/0008_quantized_index.sql. Searches through it: search_passes.sql's index_codes.

-- name: create
-- `prodvec quantized-index create`: the code function with the catalog mean (or none), then
-- the index (prodvec_create_quantized_index() in migrations/0008_quantized_index.sql).
SELECT dimensions, products, mean_norm
FROM prodvec_create_quantized_index(%(centred)s, %(m)s, %(ef_construction)s)

-- name: drop
SELECT prodvec_drop_quantized_index() AS dropped

-- name: size
-- The binary-code index's size on disk, bytes; NULL without it.
SELECT pg_relation_size(to_regclass('products_embedding_bit_hnsw'))

-- name: forget_recall
-- The recall measured through the code index (and the effort tuned for it) describes the graph
-- just dropped or replaced: searches through a new one run as planned until `prodvec recall`.
DELETE FROM prodvec_recall_settings WHERE kind IN ('codes_unfiltered', 'codes_filtered')

-- name: halfvec_index_size
-- The photo column's halfvec HNSW index's size, bytes; NULL without it.
SELECT pg_relation_size(to_regclass('products_embedding_hnsw'))

-- name: drop_halfvec_index
-- `prodvec quantized-index create --replace-halfvec`: the code index answers the searches the
-- halfvec index did, so the larger graph can go (what the code index saves is then saved).
DROP INDEX IF EXISTS products_embedding_hnsw

-- name: restore_halfvec_index
-- After the code index is dropped: the halfvec index again where it was replaced (those missing
-- are made, as migrations/0004 defines them).
SELECT prodvec_create_vector_indexes()
