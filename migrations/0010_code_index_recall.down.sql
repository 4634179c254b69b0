-- Undo 0010_code_index_recall.sql: the code index's measured kinds go, and the kind check is
-- 0006's again on every model's recall settings.
DO $$
DECLARE
    settings regclass;
    kind_check name;
BEGIN
    FOR settings IN
        SELECT c.oid::regclass FROM pg_class c
        WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
          AND c.relname ~ '^prodvec_recall_settings(_m[0-9]+)?$'
    LOOP
        EXECUTE format('DELETE FROM %s WHERE kind IN (%L, %L)', settings, 'codes_unfiltered', 'codes_filtered');
        SELECT conname INTO kind_check FROM pg_constraint
        WHERE conrelid = settings AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%kind%';
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', settings, kind_check);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (kind IN (%L, %L, %L, %L))',
                       settings, kind_check, 'unfiltered', 'scan', 'quick_look', 'category');
    END LOOP;
END
$$;
