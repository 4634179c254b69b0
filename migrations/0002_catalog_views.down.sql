-- Undo 0002_catalog_views.sql: drops the coarse vectors (a multi-view catalog should then be
-- re-embedded under single: `prodvec requeue`) and puts back 0001's prodvec_set_embedding_dimensions.
DROP INDEX IF EXISTS products_embedding_coarse_hnsw;
ALTER TABLE products DROP COLUMN IF EXISTS embedding_coarse;

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
    IF NOT drop_embeddings AND EXISTS (SELECT 1 FROM products WHERE embedding IS NOT NULL) THEN
        RAISE EXCEPTION 'products.embedding is halfvec(%) and holds vectors; the model gives % dimensions', current_dimensions, dimensions
            USING HINT = 'Run `prodvec migrate --reset-embeddings` to drop them and re-embed every product with the new model.';
    END IF;
    DROP INDEX IF EXISTS products_embedding_hnsw;
    EXECUTE format('ALTER TABLE products ALTER COLUMN embedding TYPE halfvec(%s) USING NULL', dimensions);
    UPDATE products SET embedding_model = NULL, embedded_image = NULL, embedded_at = NULL
    WHERE embedding_model IS NOT NULL;
    PERFORM prodvec_enqueue(array_agg(id), array_agg(image)) FROM products WHERE image <> '';
    CREATE INDEX products_embedding_hnsw ON products USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 128);
    RETURN true;
END;
$$;
