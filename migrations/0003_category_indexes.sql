-- prodvec schema 0003: per-category HNSW indexes, for searches filtered to one category.
-- Plain SQL: `psql -f migrations/0003_category_indexes.sql` and `alembic upgrade head` give the same schema.
--
-- A filter on one category keeps a few percent of the products. The main HNSW index then
-- walks past many other products to find them, and a query far from the category (a shoe
-- photo filtered to bags) finds few or none; an exact pass over thousands of scattered rows is
-- complete but costs several times an unfiltered search. A partial index per category holds
-- just that category's graph: the filtered search is an ordinary index search again, near or
-- far. PostgreSQL picks the index itself when a query says `category = '…'` (with the value
-- known at planning: prodvec searches with plan_cache_mode = force_custom_plan).
-- The cost: every product is in two graphs (index size and insert time about double).

-- Index names: a prefix and a hash, since category names can be any text.
CREATE FUNCTION prodvec_category_index_name(category text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'products_embedding_hnsw_c_' || left(md5(category), 16)
$$;

-- Give every category with at least min_products embedded products its own index, and drop
-- the indexes of categories that have fallen below it (or are gone). Returns what it did.
-- Run it again after imports change the categories: `prodvec category-indexes` does.
CREATE FUNCTION prodvec_index_categories(min_products integer DEFAULT 1000)
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
