-- Undo 0005_covering_filter_index.sql: 0004's prodvec_create_vector_indexes() back, no
-- prodvec_filter_index_carries_vectors(), the plain (category, price) index and no category
-- length check.

CREATE OR REPLACE FUNCTION prodvec_create_vector_indexes() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_hnsw ON products '
                   'USING hnsw (embedding halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_embedding_coarse_hnsw ON products '
                   'USING hnsw (embedding_coarse halfvec_cosine_ops) WITH (%s)', prodvec_hnsw_options());
END;
$$;

DROP FUNCTION prodvec_filter_index_carries_vectors();
DROP INDEX products_category_price;
CREATE INDEX products_category_price ON products (category, price);
ALTER TABLE products DROP CONSTRAINT products_category_length;
