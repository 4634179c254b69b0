-- prodvec schema 0010: searches through the binary-code index (migrations/0008) are kinds of
-- index search of their own, so `prodvec recall` measures them and `prodvec recall --tune`
-- stores the candidates they need for a recall target, as for the halfvec index's kinds.
-- Plain SQL: `psql -f migrations/0010_code_index_recall.sql` and `alembic upgrade head` give
-- the same schema.
--
-- Why: a code index answers every unfiltered search and every filtered one that no category
-- index serves. Its recall depends on how many candidates are re-ranked and on how far the
-- query lies from the catalog, as the halfvec index's depends on hnsw.ef_search; measured and
-- tuned under the halfvec kinds' names it would describe the wrong index.
-- codes_unfiltered: no filter, one search of the code graph; codes_filtered: its iterative scan.

-- Every model's recall settings (prodvec_recall_settings_m<id>: models kept beside the active
-- one, migrations/0009) carry the same check, named as the first table's.
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
        SELECT conname INTO kind_check FROM pg_constraint
        WHERE conrelid = settings AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%kind%';
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', settings, kind_check);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (kind IN (%L, %L, %L, %L, %L, %L))',
                       settings, kind_check, 'unfiltered', 'scan', 'quick_look', 'category',
                       'codes_unfiltered', 'codes_filtered');
    END LOOP;
END
$$;
