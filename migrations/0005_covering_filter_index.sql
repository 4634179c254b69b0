-- prodvec schema 0005: exact passes read the vectors from the (category, price) index.
-- Plain SQL: `psql -f migrations/0005_covering_filter_index.sql` and `alembic upgrade head` give the same schema.
--
-- Why: an exact pass (Product.similar_to under a selective filter) reads every matching
-- product's vector. From the table that is one page per match, as products are stored in
-- the order they came, not by category: ~1.5 µs a match. The (category, price) index now
-- carries the vector (and id, stock), so the pass reads matches side by side in the index
-- instead (an index-only scan). Measured at 100k products, 512-d: top 10 of one category
-- (4,949 products) 7.5 → 2.1 ms, of a category under a price cap ~3.6 → 0.9 ms.
-- The cost: the index holds a copy of each vector (~130 MB per 100k products at 512-d).
-- Pages written since the last (auto)vacuum are still read from the table.
--
-- A B-tree entry must stay under 2,704 bytes: the vector is carried up to 768 dimensions
-- (1,544 bytes as halfvec), which leaves room for a category of up to 1,000 bytes (the new
-- CHECK; `prodvec import` takes categories of up to 250 characters). Wider vectors are not
-- carried, and their exact passes read the table as before.
--
-- This migration rebuilds the index with the vectors in it: on a large catalog that takes a
-- while (seconds per 100k products), and writes to products wait for it.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM products WHERE octet_length(category) > 1000) THEN
        RAISE EXCEPTION 'products.category holds values longer than 1,000 bytes'
            USING HINT = 'Shorten them (SELECT sku, category FROM products WHERE octet_length(category) > 1000), then migrate again.';
    END IF;
END;
$$;

ALTER TABLE products ADD CONSTRAINT products_category_length CHECK (octet_length(category) <= 1000);

-- Whether the (category, price) index carries the vectors; NULL when the index is missing.
-- Search plans ask it too (prodvec/sql/search_passes.sql): exact passes read such an index alone.
CREATE FUNCTION prodvec_filter_index_carries_vectors() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT bool_or(a.attname = 'embedding')
    FROM pg_index x
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
    WHERE x.indexrelid = to_regclass('products_category_price')
$$;

-- 0004's function, now also making the (category, price) index fit the vectors' width: it is
-- called after the dimensions change (prodvec_set_embedding_dimensions) and after bulk backfills.
CREATE OR REPLACE FUNCTION prodvec_create_vector_indexes() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    carry_vector boolean := (
        SELECT a.atttypmod BETWEEN 1 AND 768
        FROM pg_attribute a
        WHERE a.attrelid = 'products'::regclass AND a.attname = 'embedding'
    );
    carries_vector boolean := prodvec_filter_index_carries_vectors();
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_hnsw ON products '
                   'USING hnsw (embedding halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_coarse_hnsw ON products '
                   'USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
    IF carries_vector IS DISTINCT FROM carry_vector THEN
        DROP INDEX IF EXISTS products_category_price;
        IF carry_vector THEN
            -- Everything an exact pass over a category and price filter reads: id (to join its
            -- k nearest back), stock (in-stock filters) and the vector.
            CREATE INDEX products_category_price ON products (category, price) INCLUDE (id, stock, embedding);
        ELSE
            CREATE INDEX products_category_price ON products (category, price);
        END IF;
    END IF;
END;
$$;

SELECT prodvec_create_vector_indexes();
