-- The two-stage search through the binary-code index (migrations/0008_quantized_index.sql,
-- prodvec/search/quantized.py). Placeholders and {slots} as in search_passes.sql, plus
-- {dimensions} (the codes' width, as the index casts them) and {candidates}.

-- name: code_dimensions
-- The codes' width when products has the binary-code index, else no row.
SELECT a.atttypmod
FROM pg_attribute a
WHERE a.attrelid = to_regclass('products_embedding_bit_hnsw') AND a.attnum = 1

-- name: rerank
-- Stage 1: the {candidates} matching products nearest to the query's code (Hamming distance,
-- through the index; with a filter, its iterative scan). Stage 2: their exact halfvec
-- distances, top k. "kept" (the same on every row) says how many candidates the index gave:
-- fewer than asked means its scan gave up (or fewer products match), so the caller cannot
-- trust the re-rank and asks the exact pass.
SELECT {columns}, distance, kept
FROM (
    SELECT id, distance, count(*) OVER () AS kept
    FROM (
        SELECT id, embedding <=> %(query)s AS distance
        FROM products
        WHERE embedding IS NOT NULL AND id IS DISTINCT FROM %(exclude_id)s AND ({filters})
        ORDER BY prodvec_binary_code(embedding)::bit({dimensions})
                 <~> prodvec_binary_code(%(query)s)::bit({dimensions})
        LIMIT {candidates}
    ) candidates
    ORDER BY distance + 0, id
    LIMIT {k}
) nearest
JOIN products USING (id)
ORDER BY distance, id

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
