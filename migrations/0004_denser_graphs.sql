-- prodvec schema 0004: denser HNSW graphs (m = 32, ef_construction = 200; were 16 and 128).
-- Plain SQL: `psql -f migrations/0004_denser_graphs.sql` and `alembic upgrade head` give the same schema.
--
-- Why: on clustered vectors (product photos are: shoes near shoes) an m = 16 graph leaves
-- products that no search reaches. Measured on 100k clustered 512-d vectors
-- (benchmarks/filtered_search.py's catalog): searched with its own vector, 0.9–1.8% of a
-- random 1,000 products did not come back first (three builds), and in one build half of one
-- cluster (278 of 534) was not found at ef_search 40 nor 200; unfiltered recall@10 was
-- 0.978–0.989 with 4–8 of 400 queries below 0.5. At m = 32, ef_construction = 200: 0.4–0.5%
-- unreached, recall@10 0.9997, none below 0.5. The cost: builds take ~2.2x as long (21 → 46 s
-- at 100k on 2 cores), an unfiltered search up to ~15% longer, inserts into the index ~2x.
--
-- Every HNSW index prodvec makes takes its options from prodvec_hnsw_options() from now on.
-- This migration rebuilds the existing indexes: on a large catalog that takes a while
-- (minutes per million products), and writes to products wait for it.

CREATE FUNCTION prodvec_hnsw_options() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'm = 32, ef_construction = 200'
$$;

-- The index of each vector column (`embedding`; `embedding_coarse` under multi-view catalogs),
-- where missing: after a bulk backfill dropped them, after the dimensions changed.
CREATE FUNCTION prodvec_create_vector_indexes() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_hnsw ON products '
                   'USING hnsw (embedding halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_coarse_hnsw ON products '
                   'USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
END;
$$;

-- One category's own index (migrations/0003), with the category as its comment.
CREATE FUNCTION prodvec_create_category_index(category text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    index_name text := prodvec_category_index_name(category);
BEGIN
    EXECUTE format('CREATE INDEX %I ON products USING hnsw (embedding halfvec_cosine_ops) WITH (%s) '
                   'WHERE category = %L', index_name, prodvec_hnsw_options(), category);
    -- What searches look the index up by.
    EXECUTE format('COMMENT ON INDEX %I IS %L', index_name, category);
    RETURN index_name;
END;
$$;

-- 0002's function, now making the indexes with prodvec_create_vector_indexes().
CREATE OR REPLACE FUNCTION prodvec_set_embedding_dimensions(dimensions integer, drop_embeddings boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    current_dimensions integer;
BEGIN
    SELECT a.atttypmod INTO current_dimensions
    FROM pg_attribute a
    WHERE a.attrelid = 'products'::regclass AND a.attname = 'embedding';
    IF current_dimensions = dimensions THEN
        RETURN false;
    END IF;
    IF NOT drop_embeddings AND EXISTS (
        SELECT 1 FROM products WHERE embedding IS NOT NULL OR embedding_coarse IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'products.embedding is halfvec(%) and holds vectors; the model gives % dimensions', current_dimensions, dimensions
            USING HINT = 'Run `prodvec migrate --reset-embeddings` to drop them and re-embed every product with the new model.';
    END IF;
    DROP INDEX IF EXISTS products_embedding_hnsw;
    DROP INDEX IF EXISTS products_embedding_coarse_hnsw;
    EXECUTE format('ALTER TABLE products ALTER COLUMN embedding TYPE halfvec(%1$s) USING NULL, '
                   'ALTER COLUMN embedding_coarse TYPE halfvec(%1$s) USING NULL', dimensions);
    UPDATE products SET embedding_model = NULL, embedded_image = NULL, embedded_at = NULL
    WHERE embedding_model IS NOT NULL;
    PERFORM prodvec_enqueue(array_agg(id), array_agg(image)) FROM products WHERE image <> '';
    PERFORM prodvec_create_vector_indexes();
    RETURN true;
END;
$$;

-- 0003's function, now making each index with prodvec_create_category_index().
CREATE OR REPLACE FUNCTION prodvec_index_categories(min_products integer DEFAULT 1000)
RETURNS TABLE (category text, products bigint, index_name text, action text)
LANGUAGE plpgsql AS $$
DECLARE
    wanted_categories text[];
    wanted_counts bigint[];
    stale_indexes text[];
    i integer;
BEGIN
    -- Collected first: an index cannot be made or dropped while a loop still reads the table.
    SELECT coalesce(array_agg(w.category ORDER BY w.category), '{}'),
           coalesce(array_agg(w.n ORDER BY w.category), '{}')
    INTO wanted_categories, wanted_counts
    FROM (
        SELECT p.category, count(*) AS n
        FROM products p
        WHERE p.embedding IS NOT NULL AND p.category IS NOT NULL
        GROUP BY p.category
        HAVING count(*) >= min_products
    ) w;
    SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
    INTO stale_indexes
    FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
    WHERE x.indrelid = 'products'::regclass
      AND starts_with(c.relname, 'products_embedding_hnsw_c_')
      AND c.relname::text <> ALL (
          SELECT prodvec_category_index_name(wanted) FROM unnest(wanted_categories) AS wanted);

    FOR i IN 1 .. cardinality(wanted_categories) LOOP
        category := wanted_categories[i];
        products := wanted_counts[i];
        index_name := prodvec_category_index_name(category);
        IF to_regclass(index_name) IS NULL THEN
            PERFORM prodvec_create_category_index(category);
            action := 'created';
        ELSE
            action := 'kept';
        END IF;
        RETURN NEXT;
    END LOOP;
    FOR i IN 1 .. cardinality(stale_indexes) LOOP
        EXECUTE format('DROP INDEX %I', stale_indexes[i]);
        category := NULL;
        products := NULL;
        index_name := stale_indexes[i];
        action := 'dropped';
        RETURN NEXT;
    END LOOP;
END;
$$;

-- The indexes there are now, rebuilt with the new options.
DO $$
DECLARE
    indexed record;
BEGIN
    -- Collected first, then rebuilt.
    FOR indexed IN
        SELECT c.relname AS index_name, obj_description(x.indexrelid, 'pg_class') AS category
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        WHERE x.indrelid = 'products'::regclass AND starts_with(c.relname, 'products_embedding_hnsw_c_')
          AND obj_description(x.indexrelid, 'pg_class') IS NOT NULL
        ORDER BY 1
    LOOP
        EXECUTE format('DROP INDEX %I', indexed.index_name);
        PERFORM prodvec_create_category_index(indexed.category);
    END LOOP;
END;
$$;
DROP INDEX products_embedding_hnsw;
DROP INDEX products_embedding_coarse_hnsw;
SELECT prodvec_create_vector_indexes();
