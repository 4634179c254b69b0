-- Queries the embedding worker and the status/retry commands run on embedding_jobs.

-- name: claim
-- Take up to %(limit)s ready jobs of one model under a lease. SKIP LOCKED lets workers claim side by
-- side; the lease (not a held lock) is what keeps others off, so the claim commits at once
-- and a worker that dies simply lets its lease run out.
WITH ready AS (
    SELECT product_id
    FROM embedding_jobs
    WHERE state = 'pending'
      AND model_id = %(model_id)s
      AND run_after <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY enqueued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE embedding_jobs AS j
SET leased_until = now() + make_interval(secs => %(lease_seconds)s),
    lease_token = %(token)s,
    attempts = j.attempts + 1
FROM ready JOIN products AS p ON p.id = ready.product_id
WHERE j.product_id = ready.product_id AND j.model_id = %(model_id)s
RETURNING j.product_id, j.image, j.attempts, p.sku;

-- name: lock_products
-- Lock product rows before job rows, the same order as an import's UPDATE → trigger, so a
-- write-back and a concurrent image change never deadlock.
SELECT id FROM products WHERE id = ANY(%(product_ids)s) ORDER BY id FOR UPDATE;

-- name: model_is_active
-- Asked after lock_products, in the write-back's transaction: an activation (which renames the
-- vector columns, migrations/0009) waits for the row locks, so the columns chosen by the answer
-- are the model's until the write-back commits. No row: the model was dropped.
SELECT active FROM embedding_models WHERE id = %(model_id)s;

-- name: write_back
-- Store vectors for the jobs this claim still holds for the same image, in the model's columns
-- ({embedding} etc.: the plain names for the active model, `_m<id>` ones for the others). A job whose image
-- changed meanwhile was reset by the trigger (new image, no lease): it is not deleted and
-- its stale vector is not written; the new image gets embedded by a later claim.
-- Vectors travel in binary (the b placeholder): formatting 512 of them as text costs ~50x the query.
-- The coarse views are one NULL array under PRODVEC_CATALOG_VIEWS=single: unnest pads it with NULLs.
WITH vectors AS (
    SELECT * FROM unnest(%(product_ids)s::bigint[], %(images)s::text[], %(embeddings)b::halfvec[],
                         %(coarse_embeddings)b::halfvec[])
        AS v(product_id, image, embedding, embedding_coarse)
), done AS (
    DELETE FROM embedding_jobs AS j
    USING vectors AS v
    WHERE j.product_id = v.product_id AND j.model_id = %(model_id)s AND j.image = v.image
      AND j.lease_token = %(token)s
    RETURNING j.product_id
)
UPDATE products AS p
SET {embedding} = v.embedding,
    {embedding_coarse} = v.embedding_coarse,
    {embedding_model} = %(model)s,
    {embedded_image} = v.image,
    {embedded_at} = now()
FROM done JOIN vectors AS v USING (product_id)
WHERE p.id = done.product_id AND p.image = v.image;

-- name: fail
-- Permanent failure: keep the reason; retried only when the image changes or on `prodvec retry`.
UPDATE embedding_jobs
SET state = 'failed', last_error = %(reason)s, leased_until = NULL, lease_token = NULL
WHERE product_id = %(product_id)s AND lease_token = %(token)s;

-- name: retry_later
-- Transient failure: back off exponentially. The worker decides when a failure is due instead
-- (permanent, or out of attempts: WorkerOptions.max_attempts).
UPDATE embedding_jobs
SET state = 'pending',
    run_after = now() + make_interval(secs => %(base_delay)s * 2 ^ (attempts - 1)),
    last_error = %(reason)s,
    leased_until = NULL,
    lease_token = NULL
WHERE product_id = %(product_id)s AND lease_token = %(token)s;

-- name: release
-- Hand a claim back untouched (shutdown): the attempt does not count.
UPDATE embedding_jobs
SET leased_until = NULL, lease_token = NULL, attempts = greatest(attempts - 1, 0)
WHERE lease_token = %(token)s;

-- name: status
-- The active model's queue (`prodvec model` shows the others'). Each product in exactly one state, so the states add up to total: its open job's (failed,
-- retrying after a transient error, pending), else no_image, else up_to_date (a vector, nothing
-- queued), else not_queued (an image, no vector, no job: only when jobs were deleted by hand).
-- embedded counts the products with a vector, whatever their state: a requeued product keeps
-- its vector, and stays searchable, until the new one is written.
SELECT
    count(*) AS total,
    count(*) FILTER (WHERE state = 'up_to_date') AS up_to_date,
    count(*) FILTER (WHERE state = 'pending') AS pending,
    count(*) FILTER (WHERE state = 'retrying') AS retrying,
    count(*) FILTER (WHERE state = 'failed') AS failed,
    count(*) FILTER (WHERE state = 'no_image') AS no_image,
    count(*) FILTER (WHERE state = 'not_queued') AS not_queued,
    count(*) FILTER (WHERE has_vector) AS embedded,
    extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE state IN ('pending', 'retrying')))
        AS oldest_pending_seconds
FROM (
    SELECT p.embedding IS NOT NULL AS has_vector, j.enqueued_at,
           CASE WHEN j.state = 'failed' THEN 'failed'
                WHEN j.state = 'pending' AND j.last_error IS NOT NULL THEN 'retrying'
                WHEN j.state = 'pending' THEN 'pending'
                WHEN coalesce(p.image, '') = '' THEN 'no_image'
                WHEN p.embedding IS NOT NULL THEN 'up_to_date'
                ELSE 'not_queued' END AS state
    FROM products AS p
    LEFT JOIN embedding_jobs AS j ON j.product_id = p.id AND j.model_id = (SELECT id FROM active_model)
) AS product_states;

-- name: failures
-- Failed products, then those waiting to retry after a transient error (with the seconds until their
-- next try): each with the last error and the model whose job it is (a model being added backfills too),
-- the active model's first.
SELECT p.sku, j.state, j.attempts, j.last_error,
       CASE WHEN j.state = 'pending' THEN greatest(0, extract(epoch FROM j.run_after - now())) END,
       j.image, m.spec
FROM embedding_jobs AS j
JOIN products AS p ON p.id = j.product_id
JOIN embedding_models AS m ON m.id = j.model_id
WHERE j.state = 'failed' OR j.last_error IS NOT NULL
ORDER BY j.state, NOT m.active, p.sku, m.id
LIMIT %(limit)s;

-- name: waiting_to_retry
-- `worker --once` exits with these left: how many per last error, the next try's delay.
SELECT last_error, count(*), greatest(0, extract(epoch FROM min(run_after) - now()))
FROM embedding_jobs
WHERE state = 'pending' AND last_error IS NOT NULL
GROUP BY last_error
ORDER BY count(*) DESC, last_error;

-- name: known_skus
SELECT sku FROM products WHERE sku = ANY(%(skus)s::text[]);

-- name: retry_failed
-- `prodvec retry`: failed jobs (all, or those of the given skus) go back to pending.
UPDATE embedding_jobs AS j
SET state = 'pending', attempts = 0, run_after = now(), last_error = NULL
FROM products AS p
WHERE p.id = j.product_id
  AND j.state = 'failed'
  AND (%(skus)s::text[] IS NULL OR p.sku = ANY(%(skus)s::text[]))
RETURNING p.sku;

-- name: requeue_all
-- `prodvec requeue`: every product with an image is embedded again by the active model; its
-- old vectors stay until the new ones are written.
SELECT prodvec_enqueue(array_agg(id), array_agg(image), prodvec_model_ids(true)) FROM products WHERE image <> '';

-- name: renew
-- A live worker keeps what it holds: its leases run on from now. One that died stops
-- renewing, and its jobs go back to others when the last renewal runs out.
-- Rows a write-back (or a failure) is settling right now are locked by it and skipped: they
-- need no renewal, and waiting for them could deadlock with it (the two lock a claim's rows
-- in different orders).
UPDATE embedding_jobs AS j
SET leased_until = now() + make_interval(secs => %(lease_seconds)s)
FROM (
    SELECT product_id, model_id FROM embedding_jobs
    WHERE lease_token = ANY(%(tokens)s)
    FOR UPDATE SKIP LOCKED
) AS held
WHERE (j.product_id, j.model_id) = (held.product_id, held.model_id);

-- name: claimable
-- `worker --once`: is anything left that a claim could take now, of the models it encodes?
SELECT EXISTS (
    SELECT FROM embedding_jobs
    WHERE state = 'pending' AND model_id = ANY(%(model_ids)s) AND run_after <= now()
      AND (leased_until IS NULL OR leased_until < now())
);

-- name: seconds_until_due
-- When the next pending job leased by someone else, or backing off, becomes claimable: no
-- NOTIFY announces a lease or a backoff running out, so an idle worker wakes for it.
SELECT extract(epoch FROM min(greatest(run_after, coalesce(leased_until, run_after))) - now())
FROM embedding_jobs
WHERE state = 'pending' AND model_id = ANY(%(model_ids)s);

-- name: depth
-- Jobs by state for the metrics endpoint (pending includes leased ones).
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'pending' AND leased_until > now()) AS leased,
       count(*) FILTER (WHERE state = 'failed') AS failed
FROM embedding_jobs;

-- name: products_analyzed
-- Rows products held at its last ANALYZE (-1: never analysed), for the worker's check below.
SELECT reltuples FROM pg_class WHERE oid = 'products'::regclass;

-- name: analyze_products
-- After the worker drained the queue, when it wrote more than a tenth of the rows the statistics
-- know of (or there are none): searches size their plans by them (prodvec/search/plan.py), and
-- autovacuum waits for 50 changed rows plus a tenth, which a small catalog may never reach.
ANALYZE products;
