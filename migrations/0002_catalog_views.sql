-- prodvec schema 0002: a second vector per product, for PRODVEC_CATALOG_VIEWS=multi.
-- Plain SQL: `psql -f migrations/0002_catalog_views.sql` and `alembic upgrade head` give the same schema.
-- Under multi, `embedding` holds the whole photo fitted inside the encoder's crop and
-- `embedding_coarse` a coarse 24 px thumbnail (prodvec/images/views.py, MULTI_VIEW);
-- under single (the default) `embedding_coarse` stays NULL.

-- The same dimensions as `embedding`, whatever model the column was sized for.
DO $$
BEGIN
    EXECUTE format('ALTER TABLE products ADD COLUMN embedding_coarse halfvec(%s)',
                   (SELECT atttypmod FROM pg_attribute
                    WHERE attrelid = 'products'::regclass AND attname = 'embedding'));
END;
$$;

-- Built like products_embedding_hnsw; NULLs are not indexed, so a single-view catalog's costs nothing.
CREATE INDEX products_embedding_coarse_hnsw ON products USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);

-- 0001's function, now resizing (and emptying) both vector columns together.
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
