-- Undo 0009_model_versions.sql: one model again, in products.embedding. Added models (and their
-- vectors, indexes and recall settings) are dropped; the active one stays recorded as in 0007.
DO $$
DECLARE
    added smallint;
BEGIN
    FOR added IN SELECT id FROM embedding_models WHERE NOT active LOOP
        PERFORM prodvec_drop_model(added);
    END LOOP;
END;
$$;

DROP FUNCTION prodvec_pin_active_model();
DROP FUNCTION prodvec_drop_model(smallint);
DROP FUNCTION prodvec_activate_model(smallint);
DROP FUNCTION prodvec_indexes_on(text[]);
DROP FUNCTION prodvec_model_behind(smallint);
DROP FUNCTION prodvec_queue_backfill(smallint);
DROP FUNCTION prodvec_model_index_statements(smallint);
DROP FUNCTION prodvec_add_model(text, integer, text);
DROP FUNCTION prodvec_set_active_model(text, integer, text, boolean);

-- The queue: one job per product again.
DROP INDEX embedding_jobs_ready;
ALTER TABLE embedding_jobs DROP CONSTRAINT embedding_jobs_pkey, ADD PRIMARY KEY (product_id);
ALTER TABLE embedding_jobs DROP COLUMN model_id;
CREATE INDEX embedding_jobs_ready ON embedding_jobs (enqueued_at) WHERE state = 'pending';

DROP FUNCTION prodvec_enqueue(bigint[], text[], smallint[]);
CREATE FUNCTION prodvec_enqueue(product_ids bigint[], images text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    queued integer;
BEGIN
    INSERT INTO embedding_jobs AS j (product_id, image)
    SELECT * FROM unnest(product_ids, images)
    ON CONFLICT (product_id) DO UPDATE
        SET image = EXCLUDED.image, state = 'pending', attempts = 0, run_after = now(),
            leased_until = NULL, lease_token = NULL, last_error = NULL, enqueued_at = now();
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM pg_notify('prodvec_embedding_jobs', '');
    END IF;
    RETURN queued;
END;
$$;

CREATE OR REPLACE FUNCTION prodvec_enqueue_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM prodvec_enqueue(array_agg(id), array_agg(image))
    FROM inserted_products
    WHERE image <> '' AND embedding IS NULL;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION prodvec_enqueue_image_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $sql$
        DELETE FROM embedding_jobs j
        USING old_products o JOIN new_products n ON n.id = o.id
        WHERE j.product_id = n.id
          AND n.image IS DISTINCT FROM o.image
          AND (coalesce(n.image, '') = '' OR n.embedding IS DISTINCT FROM o.embedding)
    $sql$;
    EXECUTE $sql$
        SELECT prodvec_enqueue(array_agg(n.id), array_agg(n.image))
        FROM old_products o JOIN new_products n ON n.id = o.id
        WHERE n.image IS DISTINCT FROM o.image
          AND n.image <> ''
          AND n.embedding IS NOT DISTINCT FROM o.embedding
    $sql$;
    RETURN NULL;
END;
$$;

DROP FUNCTION prodvec_model_ids(boolean);
DROP FUNCTION prodvec_model_columns();

-- 0007's table and function.
DROP VIEW active_model;
CREATE TABLE active_model (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    spec          text NOT NULL CHECK (spec <> ''),
    dimensions    integer NOT NULL CHECK (dimensions > 0),
    catalog_views text NOT NULL CHECK (catalog_views IN ('single', 'multi')),
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO active_model (spec, dimensions, catalog_views, recorded_at)
SELECT spec, dimensions, catalog_views, coalesce(activated_at, added_at) FROM embedding_models WHERE active;
DROP TABLE embedding_models;

CREATE FUNCTION prodvec_set_active_model(spec text, dimensions integer, catalog_views text,
                                         drop_embeddings boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    recorded active_model;
    had_model boolean;
BEGIN
    -- Two processes recording a new catalog's first model: the second sees the first's.
    LOCK TABLE active_model IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO recorded FROM active_model;
    had_model := FOUND;
    IF had_model AND (recorded.spec, recorded.dimensions, recorded.catalog_views)
                 = (spec, dimensions, catalog_views) THEN
        RETURN false;
    END IF;
    IF had_model AND NOT drop_embeddings THEN
        RAISE EXCEPTION 'the catalog''s active model is % (% dimensions, % catalog views), not % (% dimensions, % catalog views)',
            recorded.spec, recorded.dimensions, recorded.catalog_views, spec, dimensions, catalog_views
            USING HINT = 'Use the active model, or change models with `prodvec migrate --reset-embeddings` (drops every vector and re-embeds the catalog).';
    END IF;
    -- Same dimensions: the resize leaves the vectors, which the new model must not meet.
    IF NOT prodvec_set_embedding_dimensions(dimensions, drop_embeddings) AND had_model THEN
        UPDATE products
        SET embedding = NULL, embedding_coarse = NULL, embedding_model = NULL, embedded_image = NULL,
            embedded_at = NULL
        WHERE embedding IS NOT NULL OR embedding_coarse IS NOT NULL OR embedding_model IS NOT NULL;
        PERFORM prodvec_enqueue(array_agg(id), array_agg(image)) FROM products WHERE image <> '';
    END IF;
    INSERT INTO active_model AS a (spec, dimensions, catalog_views)
    VALUES (spec, dimensions, catalog_views)
    ON CONFLICT (singleton) DO UPDATE
        SET spec = EXCLUDED.spec, dimensions = EXCLUDED.dimensions, catalog_views = EXCLUDED.catalog_views,
            recorded_at = now();
    RETURN true;
END;
$$;
