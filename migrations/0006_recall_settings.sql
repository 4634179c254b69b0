-- prodvec schema 0006: the recall each kind of index search reaches on this catalog, and the
-- effort that reaches it. Plain SQL: `psql -f migrations/0006_recall_settings.sql` and
-- `alembic upgrade head` give the same schema.
--
-- Why: HNSW recall depends on the catalog and on how far a query lies from it (a text query,
-- a photo of something the shop does not sell). `prodvec recall` measures it per kind of
-- search (the planner's index paths: unfiltered, iterative scan, quick look, a category's own
-- index) and per distance band (how far the query's nearest candidate lies); `prodvec recall
-- --tune` stores the least hnsw.ef_search that meets a target in each. Searches read this
-- table (prodvec/sql/recall.sql) and report the measured recall with each index answer.

CREATE TABLE prodvec_recall_settings (
    kind text NOT NULL CHECK (kind IN ('unfiltered', 'scan', 'quick_look', 'category')),
    band smallint NOT NULL CHECK (band >= 0),
    -- The band holds queries whose nearest candidate (the first pass's first hit) lies within
    -- this cosine distance; NULL: no bound (the farthest band).
    max_distance real CHECK (max_distance BETWEEN 0 AND 2),
    -- The least hnsw.ef_search searches of this band get; NULL: as the planner sizes it;
    -- 0: none reaches the target (pgvector allows up to 1000), the exact pass answers them.
    ef_search integer CHECK (ef_search BETWEEN 0 AND 1000),
    -- Mean recall@k of the sample's index answers in the band, and of their worst tenth;
    -- NULL: none of the band's sampled queries was answered by the index.
    recall real CHECK (recall BETWEEN 0 AND 1),
    worst_decile real CHECK (worst_decile BETWEEN 0 AND 1),
    queries integer NOT NULL CHECK (queries >= 0),  -- sampled queries the index answered in this band
    target real CHECK (target BETWEEN 0 AND 1),  -- what --tune aimed for; NULL: measured only
    products bigint NOT NULL,  -- embedded products when measured: re-measure after big imports
    measured_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, band)
);
