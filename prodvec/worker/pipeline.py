"""The embedding worker: claim → load+decode (pool) → encode (batched) → write back.

It embeds for every model of the catalog it can load (lanes.py): the active model's jobs
first, then those of models added beside it (their backfill). What it stores per product
follows each model's catalog views: single, the photo (embedding); multi, the fitted photo and
a coarse thumbnail (embedding and embedding_coarse, encoded in one batch of twice the products).

Stages overlap: while the encoder works on one batch, the pool prepares the next ones and a
writer thread commits the previous one, so the slowest stage sets the pace. Queues between
stages are bounded, so memory stays flat and leases are not held for work that waits.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psycopg
import torch

from prodvec import queue as jobs
from prodvec.db.connection import connect
from prodvec.db.migrate import embedding_dimensions
from prodvec.encode import Encoder
from prodvec.errors import DatabaseUnavailable, ImageFailure, SchemaMismatch
from prodvec.images.views import SINGLE_VIEW, ViewPolicy
from prodvec.worker.gpu_decode import GpuJpegDecoder
from prodvec.worker.lanes import EncoderLoader, Lane, Lanes
from prodvec.worker.lease import LeaseKeeper
from prodvec.worker.metrics import WorkerMetrics
from prodvec.worker.prepare import Prepared, Preparer, PreparingBatch

log = logging.getLogger("prodvec.worker")


@dataclass(frozen=True)
class WorkerOptions:
    batch_size: int = 32
    decode_threads: int = 2
    #: Plain JPEGs decoded in batches on the GPU (nvJPEG); None: when the encoder runs on CUDA.
    gpu_decode: bool | None = None
    #: Claims prepared ahead of the encoder; small, because prepared claims hold leases.
    prefetch_batches: int = 2
    lease_seconds: float = 60.0
    max_attempts: int = 5
    retry_base_delay_seconds: float = 2.0
    poll_seconds: float = 5.0
    reconnect_max_seconds: float = 30.0


@dataclass
class WorkerStats:
    embedded: int = 0
    failed: int = 0
    retried: int = 0
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started_at
        return self.embedded / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        return (f"embedded {self.embedded}, failed {self.failed}, retried {self.retried}, "
                f"{self.images_per_second:.1f} img/s")


@dataclass
class _Batch:
    claim: jobs.Claim
    lane: Lane
    preparing: PreparingBatch
    claimed_at: float = field(default_factory=time.perf_counter)


@dataclass
class _Encoded:
    claim: jobs.Claim
    lane: Lane
    prepared: list[Prepared]
    vectors: np.ndarray  # N×C×D: one per catalog view of each prepared product
    claimed_at: float
    encode_seconds: float


class Worker:
    """One worker process. ``run(once=True)`` drains the queue and returns.

    ``encoder`` under ``policy`` (its catalog views) is the catalog's active model (recorded as
    such in a catalog without one; ModelMismatch when the catalog has no such model). ``loader``
    loads the encoders of its other models; without one, their jobs are left to other workers."""

    def __init__(
        self,
        url: str,
        encoder: Encoder,
        options: WorkerOptions | None = None,
        *,
        on_progress: Callable[[int], None] | None = None,
        metrics: WorkerMetrics | None = None,
        policy: ViewPolicy = SINGLE_VIEW,
        loader: EncoderLoader | None = None,
    ) -> None:
        self.url = url
        self.encoder = encoder
        self.options = options or WorkerOptions()
        self.policy = policy
        self.loader = loader
        self.stats = WorkerStats()
        self._embedded_at_analyze = 0  # stats.embedded at this worker's last ANALYZE of products
        self.metrics = metrics or WorkerMetrics()
        self.stopping = threading.Event()
        self._on_progress = on_progress

    @property
    def decodes_on_gpu(self) -> bool:
        """Plain JPEGs go through the batched GPU decoder (else PIL decodes every image; it
        alone makes views other than the encoder's own crop)."""
        return GpuJpegDecoder.for_encoder(
            self.encoder, self.options.gpu_decode, encoder_crop_only=self.policy.catalog_is_plain_photo
        ) is not None

    def stop(self) -> None:
        """Ask the worker to finish the batch it is encoding, hand back the rest and return."""
        self.stopping.set()

    def run(self, *, once: bool = False) -> WorkerStats:
        self._connected = False
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._run_connected(once=once)
                return self.stats
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                # Restart or network blip: what we held goes back when its lease runs out (or
                # at once where the release below still got through); reconnect and go on.
                if self._connected:  # lost a working connection: start the backoff afresh
                    delay = 1.0
                    self._connected = False
                    self.metrics.record_reconnect()
                if once and delay >= self.options.reconnect_max_seconds:
                    # --once is a job that must end: after the longest wait, give up and say so.
                    raise DatabaseUnavailable(f"the database stayed unavailable: {str(exc).strip()}") from exc
                log.warning("database unavailable (%s); reconnecting in %.0f s", str(exc).strip(), delay)
                if self.stopping.wait(delay):
                    break
                delay = min(delay * 2, self.options.reconnect_max_seconds)
        return self.stats

    def _run_connected(self, *, once: bool) -> None:
        with (
            connect(self.url, autocommit=True) as conn,
            connect(self.url, autocommit=True) as write_conn,
            LeaseKeeper(self.url, self.options.lease_seconds) as leases,
        ):
            self._check_schema(conn)
            self._connected = True
            conn.execute(f"LISTEN {jobs.CHANNEL}")
            writer = _Writer(write_conn, self, leases)
            lanes = Lanes(self.encoder, self.policy, loader=self.loader, preparer=self._preparer)
            try:
                lanes.refresh(conn, force=True)
                self._loop(conn, lanes, writer, leases, once=once)
            finally:
                lanes.close()
                writer.close()

    def _preparer(self, encoder: Encoder, policy: ViewPolicy) -> Preparer:
        return Preparer(encoder, threads=self.options.decode_threads, gpu_decode=self.options.gpu_decode, policy=policy)

    def _check_schema(self, conn: psycopg.Connection) -> None:
        if embedding_dimensions(conn) is None:
            raise SchemaMismatch("the database has no products table: run `prodvec migrate`")
        if embedding_dimensions(conn, "embedding_coarse") is None:
            raise SchemaMismatch("products has no embedding_coarse column: run `prodvec migrate`")

    def _loop(
        self, conn: psycopg.Connection, lanes: Lanes, writer: _Writer, leases: LeaseKeeper, *, once: bool
    ) -> None:
        in_flight: deque[_Batch] = deque()
        try:
            while not self.stopping.is_set():
                lanes.refresh(conn)
                while len(in_flight) < self.options.prefetch_batches and not self.stopping.is_set():
                    batch = self._claim(conn, lanes)
                    if batch is None:
                        break
                    leases.hold(batch.claim.token)
                    in_flight.append(batch)
                if in_flight:
                    writer.put(self._encode(in_flight.popleft()))
                elif once:
                    writer.drain()
                    lanes.refresh(conn, force=True)
                    if not jobs.claimable(conn, lanes.model_ids):
                        self._analyze_if_stale(conn)
                        return
                else:
                    writer.drain()
                    self._analyze_if_stale(conn)
                    self._wait_for_jobs(conn, lanes)
                    lanes.refresh(conn, force=True)
        finally:
            for batch in in_flight:  # prepared ahead but never encoded: hand back at once
                batch.preparing.cancel()
            for batch in in_flight:
                # On a lost connection this raises; those claims then go back when their lease ends.
                jobs.release(conn, batch.claim.token)
                leases.drop(batch.claim.token)

    def _analyze_if_stale(self, conn: psycopg.Connection) -> None:
        """With the queue drained: refresh the products' statistics when this worker wrote more
        than a tenth of the rows they know of (or none are known)."""
        written = self.stats.embedded - self._embedded_at_analyze
        if not written:
            return
        known = jobs.products_analyzed(conn)
        if known < 0 or written > 0.1 * known:
            jobs.analyze_products(conn)
            self._embedded_at_analyze = self.stats.embedded

    def _claim(self, conn: psycopg.Connection, lanes: Lanes) -> _Batch | None:
        """A batch of the first model with ready jobs, the active model first; None when none has any."""
        for lane in lanes.ordered:
            claim = jobs.claim(conn, lane.model.id, limit=self.options.batch_size,
                               lease_seconds=self.options.lease_seconds)
            if claim.jobs:
                return _Batch(claim, lane, lane.preparer.submit(claim.jobs))
        return None

    def _encode(self, batch: _Batch) -> _Encoded:
        prepared = batch.preparing.result()
        encoder = batch.lane.encoder
        # GPU-decoded pixels are already on the device; PIL's join them there.
        pixels = [item.pixels.to(encoder.device) for item in prepared if item.pixels is not None]
        views, dimensions = len(batch.lane.policy.catalog_view_names), encoder.dimensions
        started = time.perf_counter()
        if pixels:  # every product's views in one batch, product-major
            vectors = encoder.encode_images(torch.cat(pixels)).reshape(len(pixels), views, dimensions)
        else:
            vectors = np.empty((0, views, dimensions), dtype=np.float32)
        return _Encoded(batch.claim, batch.lane, prepared, vectors, batch.claimed_at, time.perf_counter() - started)

    def _wait_for_jobs(self, conn: psycopg.Connection, lanes: Lanes) -> None:
        """Sleep until NOTIFY says there is work, or the poll interval passes (fallback).

        Waits in short slices so stop() (SIGTERM) is seen at once, not after poll_seconds.
        """
        wait = min(self.options.poll_seconds, Lanes.REFRESH_SECONDS)  # models added meanwhile send no NOTIFY
        due = jobs.seconds_until_due(conn, lanes.model_ids)
        if due is not None:
            # A lease of a dead worker or a retry backoff runs out before the next poll: no
            # NOTIFY announces that, so wake for it (not up to poll_seconds later).
            wait = max(0.1, min(wait, due + 0.05))
        deadline = time.monotonic() + wait
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for _ in conn.notifies(timeout=min(remaining, 0.5), stop_after=1):
                return

    def record_written(self, embedded: int, failed: int, retried: int) -> None:
        self.stats.embedded += embedded
        self.stats.failed += failed
        self.stats.retried += retried
        if self._on_progress:
            self._on_progress(embedded + failed)


class _Writer:
    """Stage 4 on its own thread and connection: commits batches while the next one encodes."""

    def __init__(self, conn: psycopg.Connection, worker: Worker, leases: LeaseKeeper) -> None:
        self.conn = conn
        self.worker = worker
        self.leases = leases
        self.batches: queue.Queue[_Encoded | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="prodvec-writer", daemon=True)
        self.thread.start()

    def put(self, encoded: _Encoded) -> None:
        self._raise_if_failed()
        self.batches.put(encoded)

    def drain(self) -> None:
        self.batches.join()
        self._raise_if_failed()

    def close(self) -> None:
        self.batches.put(None)
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (encoded := self.batches.get()) is not None:
            try:
                if self.error is None:
                    self._write(encoded)
            except BaseException as exc:  # surfaced on the main thread by put/drain/close
                self.error = exc
            finally:
                self.batches.task_done()
        self.batches.task_done()

    def _write(self, encoded: _Encoded) -> None:
        options = self.worker.options
        token = encoded.claim.token
        started = time.perf_counter()
        ok_jobs = [item.job for item in encoded.prepared if item.error is None]
        vectors = encoded.vectors
        coarse = vectors[:, 1] if vectors.shape[1] > 1 else None
        written = jobs.write_back(self.conn, encoded.claim, ok_jobs, vectors[:, 0],
                                  model=encoded.lane.model.embedding_model, coarse_vectors=coarse)
        failed: list[ImageFailure] = []
        retried: list[ImageFailure] = []
        for item in encoded.prepared:
            if item.error is None:
                continue
            # The attempt limit, here only: the claim counted this attempt in job.attempts.
            if item.error.permanent or item.job.attempts >= options.max_attempts:
                jobs.fail(self.conn, token, item.job.product_id, item.error.reason)
                failed.append(item.error.kind)
            else:
                jobs.retry_later(self.conn, token, item.job.product_id, item.error.reason,
                                 base_delay_seconds=options.retry_base_delay_seconds)
                retried.append(item.error.kind)
            log.info("product %s: %s", item.job.sku, item.error.reason)
        self.leases.drop(token)  # every job of the claim is settled
        finished = time.perf_counter()
        metrics = self.worker.metrics
        metrics.record_results(written, failed, retried)
        metrics.record_batch(
            encode_seconds=encoded.encode_seconds,
            write_seconds=finished - started,
            total_seconds=finished - encoded.claimed_at,
        )
        self.worker.record_written(written, len(failed), len(retried))
