-- Undo 0004_denser_graphs.sql: 0002's and 0003's functions back, and the indexes rebuilt with
-- m = 16, ef_construction = 128.

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
    CREATE INDEX products_embedding_hnsw ON products USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
    CREATE INDEX products_embedding_coarse_hnsw ON products USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
    RETURN true;
END;
$$;

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
            EXECUTE format(
                'CREATE INDEX %I ON products USING hnsw (embedding halfvec_cosine_ops) '
                'WITH (m = 16, ef_construction = 128) WHERE category = %L',
                index_name, category);
            -- The category, as the index's comment: what searches look indexes up by.
            EXECUTE format('COMMENT ON INDEX %I IS %L', index_name, category);
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

DO $$
DECLARE
    indexed record;
BEGIN
    FOR indexed IN
        SELECT c.relname AS index_name, obj_description(x.indexrelid, 'pg_class') AS category
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        WHERE x.indrelid = 'products'::regclass AND starts_with(c.relname, 'products_embedding_hnsw_c_')
          AND obj_description(x.indexrelid, 'pg_class') IS NOT NULL
        ORDER BY 1
    LOOP
        EXECUTE format('DROP INDEX %I', indexed.index_name);
        EXECUTE format('CREATE INDEX %I ON products USING hnsw (embedding halfvec_cosine_ops) '
                       'WITH (m = 16, ef_construction = 128) WHERE category = %L', indexed.index_name, indexed.category);
        EXECUTE format('COMMENT ON INDEX %I IS %L', indexed.index_name, indexed.category);
    END LOOP;
END;
$$;
DROP INDEX products_embedding_hnsw;
DROP INDEX products_embedding_coarse_hnsw;
CREATE INDEX products_embedding_hnsw ON products USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
CREATE INDEX products_embedding_coarse_hnsw ON products USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);

DROP FUNCTION prodvec_create_category_index(text);
DROP FUNCTION prodvec_create_vector_indexes();
DROP FUNCTION prodvec_hnsw_options();
