-- prodvec schema 0008: an opt-in HNSW index on binary codes of the vectors, searched for a
-- candidate list that is re-ranked by the exact halfvec distance (two-stage search).
-- Plain SQL: `psql -f migrations/0008_quantized_index.sql` and `alembic upgrade head` give the same schema.
--
-- Why: a halfvec HNSW index of 512-d vectors holds ~1 KB per product and takes minutes per
-- 100k products to build. A code of one bit per dimension (pgvector's binary_quantize: the
-- sign of each component) is 64 bytes; its graph, compared by Hamming distance, is several
-- times smaller and faster to build (benchmarks/quantized.py). Signs of vectors that all lean
-- one way (CLIP-like vectors share a large common component) say little, so the catalog's mean
-- vector is subtracted first: each bit then says on which side of the average the product lies.
--
-- Nothing here builds the index: `prodvec quantized-index create` (or
-- SELECT prodvec_create_quantized_index()) does, and searches use it while it exists.
-- The mean is frozen into prodvec_binary_code() when the index is built; after the catalog
-- changes a lot (or the embedding dimensions change), create it again.

-- Build (or rebuild) the index: the code function with the catalog mean (or without, when
-- centred is false), then the HNSW graph on the codes. Returns what it built. m 32,
-- ef_construction 128: at 1M products an m 16 graph left some searches in the wrong region
-- (recall@10 0.85 whatever the candidates), m 32 did not (0.98 with 100; benchmarks/quantized.py).
CREATE FUNCTION prodvec_create_quantized_index(
    centred boolean DEFAULT true, m integer DEFAULT 32, ef_construction integer DEFAULT 128
)
RETURNS TABLE (dimensions integer, products bigint, mean_norm real)
LANGUAGE plpgsql AS $$
DECLARE
    centre halfvec;
    -- CREATE INDEX evaluates the code with search_path = pg_catalog: pgvector's names qualified.
    vector_schema text := (SELECT quote_ident(n.nspname) FROM pg_extension e
                           JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector');
BEGIN
    SELECT a.atttypmod INTO dimensions
    FROM pg_attribute a
    WHERE a.attrelid = 'products'::regclass AND a.attname = 'embedding';
    IF dimensions IS NULL OR dimensions < 1 THEN
        RAISE EXCEPTION 'products.embedding has no dimensions yet'
            USING HINT = 'Run `prodvec migrate` first.';
    END IF;
    -- The index depends on the function: both go, then both come back with the new mean.
    DROP INDEX IF EXISTS products_embedding_bit_hnsw;
    DROP FUNCTION IF EXISTS prodvec_binary_code(halfvec);
    SELECT count(*), CASE WHEN centred THEN avg(p.embedding) END INTO products, centre
    FROM products p WHERE p.embedding IS NOT NULL;
    mean_norm := CASE WHEN centre IS NULL THEN 0 ELSE l2_norm(centre) END;
    -- IMMUTABLE, a literal mean: the index may hold its results. A plain SQL body is inlined,
    -- so queries that call it match the index expression.
    EXECUTE format(
        'CREATE FUNCTION prodvec_binary_code(embedding halfvec) RETURNS bit '
        'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        CASE WHEN centre IS NULL THEN format('SELECT %s.binary_quantize(embedding)', vector_schema)
             ELSE format('SELECT %1$s.binary_quantize(embedding OPERATOR(%1$s.-) %2$L::%1$s.halfvec)',
                         vector_schema, centre::text) END);
    EXECUTE format(
        'CREATE INDEX products_embedding_bit_hnsw ON products '
        'USING hnsw ((prodvec_binary_code(embedding)::bit(%s)) bit_hamming_ops) '
        'WITH (m = %s, ef_construction = %s)',
        dimensions, m, ef_construction);
    RETURN NEXT;
END;
$$;

-- Drop the index and its code function; returns whether there was an index.
CREATE FUNCTION prodvec_drop_quantized_index() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    existed boolean := to_regclass('products_embedding_bit_hnsw') IS NOT NULL;
BEGIN
    DROP INDEX IF EXISTS products_embedding_bit_hnsw;
    DROP FUNCTION IF EXISTS prodvec_binary_code(halfvec);
    RETURN existed;
END;
$$;
