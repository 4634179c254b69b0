-- prodvec schema 0007: the catalog's active model lives in the database.
-- Plain SQL: `psql -f migrations/0007_active_model.sql` and `alembic upgrade head` give the same schema.
--
-- Why: vectors are only comparable with vectors of the same encoder under the same catalog
-- views. With the model an environment variable of each process, a search, eval or worker
-- started without it (or with another) compared a query with vectors of another model. Now
-- `prodvec migrate` (or the first `prodvec worker`) records the model once; every process reads
-- it, and one whose PRODVEC_MODEL / PRODVEC_CATALOG_VIEWS disagree refuses to run.

-- One row at most: the model `products.embedding` (and `embedding_coarse`) hold vectors of.
CREATE TABLE active_model (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    spec          text NOT NULL CHECK (spec <> ''),  -- normalised encoder spec (PRODVEC_MODEL)
    dimensions    integer NOT NULL CHECK (dimensions > 0),
    catalog_views text NOT NULL CHECK (catalog_views IN ('single', 'multi')),
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

-- A catalog embedded before this migration: its products say which model made their vectors,
-- when they all say the same ("<spec>" or "<spec>+multi-view", prodvec/images/views.py).
-- Mixed or no models: nothing is recorded; the next `prodvec migrate` records PRODVEC_MODEL's.
WITH models AS (
    SELECT DISTINCT embedding_model AS model FROM products WHERE embedding IS NOT NULL
)
INSERT INTO active_model (spec, dimensions, catalog_views)
SELECT regexp_replace(model, '\+multi-view$', ''),
       (SELECT atttypmod FROM pg_attribute WHERE attrelid = 'products'::regclass AND attname = 'embedding'),
       CASE WHEN model LIKE '%+multi-view' THEN 'multi' ELSE 'single' END
FROM models
WHERE model IS NOT NULL AND (SELECT count(*) FROM models) = 1;

-- Record the active model, sizing the vector columns for it. The first model of a catalog is
-- recorded as given (a column holding vectors of other dimensions still refuses, as
-- prodvec_set_embedding_dimensions does). Another model replaces it only with
-- drop_embeddings: every vector is dropped (other dimensions or not, they are meaningless
-- next to the new model's) and every product with an image queued. Returns whether the
-- record changed.
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
