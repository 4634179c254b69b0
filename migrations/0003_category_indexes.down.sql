-- Undo 0003_category_indexes.sql: the per-category indexes and the functions that make them.
DO $$
DECLARE
    stale text;
BEGIN
    FOR stale IN
        SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        WHERE x.indrelid = 'products'::regclass AND starts_with(c.relname, 'products_embedding_hnsw_c_')
    LOOP
        EXECUTE format('DROP INDEX %I', stale);
    END LOOP;
END;
$$;
DROP FUNCTION IF EXISTS prodvec_index_categories(integer);
DROP FUNCTION IF EXISTS prodvec_category_index_name(text);
