"""A micro-batching front for the encoder: concurrent queries share one forward pass.

Requests hand their decoded photo (or text) to :class:`QueryBatcher` and await a
``QueryVector``. One thread takes the first waiting query, lets more arrive for a few ms (the
window), then encodes every photo's query views in one ``encode_images`` call (and every text
in one ``encode_text`` call). While a pass runs, new queries queue up and form the next batch,
so under load batches grow by themselves and the window hardly matters.

The queue is bounded: past ``limit`` queries waiting or in a pass, a query is refused at once
(:class:`Overloaded`, answered 503 with Retry-After) instead of waiting without end. The
encoder itself is loaded once per process (``prodvec.encode.load_encoder``) and passed in; after
`prodvec model activate`, :meth:`QueryBatcher.switch` hands over the new one between passes.
"""
from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from prodvec.encode import Encoder
from prodvec.encode.robust import encode_queries
from prodvec.errors import QueryError
from prodvec.images.views import ViewPolicy, embedding_model
from prodvec.search.query import QueryVector, text_unsupported
from prodvec.service.errors import Overloaded

log = logging.getLogger("prodvec.service")


@dataclass(frozen=True)
class _Model:
    encoder: Encoder
    policy: ViewPolicy
    #: What the query vectors are compared with: products.embedding_model of the catalog.
    name: str


@dataclass
class _Query:
    image: Image.Image | None = None
    text: str | None = None
    robust: bool = True
    done: Future[QueryVector] = field(default_factory=Future)


class QueryBatcher:
    """Encodes query photos and texts in shared passes on one thread; bounded."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        policy: ViewPolicy,
        robust: bool,
        limit: int,
        window_seconds: float = 0.005,
        max_batch: int = 32,
    ) -> None:
        self._model = _Model(encoder, policy, embedding_model(encoder.spec, policy))
        self.robust = robust
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_batch = max_batch
        self.passes = 0
        self.queries = 0
        self._admitted = 0  # queued or in a pass
        self._lock = threading.Lock()
        self._waiting: queue.SimpleQueue[_Query | None] = queue.SimpleQueue()
        self._seconds_per_pass = 0.1  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._run, name="prodvec-query-encoder", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._admitted

    @property
    def encoder(self) -> Encoder:
        return self._model.encoder

    @property
    def policy(self) -> ViewPolicy:
        return self._model.policy

    @property
    def model(self) -> str:
        """What the query vectors are compared with: products.embedding_model of the catalog."""
        return self._model.name

    def switch(self, encoder: Encoder, policy: ViewPolicy) -> None:
        """Encode with ``encoder`` under ``policy`` from the next pass on (the catalog's model changed)."""
        self._model = _Model(encoder, policy, embedding_model(encoder.spec, policy))

    async def encode_image(self, image: Image.Image, *, robust: bool | None = None) -> QueryVector:
        """``robust``: search its turned and coarse views too; None: the server's default."""
        return await self._submit(_Query(image=image, robust=self.robust if robust is None else robust))

    async def encode_text(self, text: str) -> QueryVector:
        if not self.encoder.supports_text:
            raise QueryError(text_unsupported(self.encoder.spec))
        return await self._submit(_Query(text=text))

    def close(self) -> None:
        """Finish the queries already queued, then stop the thread."""
        self._waiting.put(None)
        self._thread.join(timeout=30)

    async def _submit(self, item: _Query) -> QueryVector:
        with self._lock:
            if self._admitted >= self.limit:
                passes_ahead = math.ceil(self._admitted / self.max_batch)
                raise Overloaded(
                    f"the server is busy ({self._admitted} queries are waiting for the encoder): retry in a moment",
                    retry_after_seconds=max(1, math.ceil(passes_ahead * self._seconds_per_pass)),
                )
            self._admitted += 1
        self._waiting.put(item)
        try:
            return await asyncio.wrap_future(item.done)
        except asyncio.CancelledError:
            item.done.cancel()  # a client gone or timed out: the thread skips it if not started
            raise

    def _run(self) -> None:
        stop = False
        while not stop and (first := self._waiting.get()) is not None:
            more, stop = self._more()
            batch = [first, *more]
            live = [item for item in batch if item.done.set_running_or_notify_cancel()]
            try:
                if live:
                    self._encode(live)
            finally:
                with self._lock:
                    self._admitted -= len(batch)

    def _more(self) -> tuple[list[_Query], bool]:
        """Queries that arrive within the window (or are already queued), up to max_batch; and
        whether close() was called meanwhile."""
        deadline = time.monotonic() + self.window_seconds
        more: list[_Query] = []
        while len(more) + 1 < self.max_batch:
            try:
                item = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return more, True
            more.append(item)
        return more, False

    def _encode(self, batch: list[_Query]) -> None:
        started = time.perf_counter()
        model = self._model  # one model for the whole pass, whatever switch() does meanwhile
        images = [item for item in batch if item.image is not None]
        texts = [item for item in batch if item.text is not None]
        try:
            if images:
                # Every view of every photo in one pass; photos that asked for the plain view
                # keep only the first view (the photo view of the robust ones is the same).
                robust = any(item.robust for item in images)
                views = len(model.policy.query_view_names) if robust else 1
                per_image = encode_queries(
                    model.encoder, [item.image for item in images if item.image is not None],
                    robust=robust, policy=model.policy, batch_size=len(images) * views,
                )
                self.passes += 1
                for item, vectors in zip(images, per_image, strict=True):
                    kept = vectors if item.robust else vectors[:1]
                    item.done.set_result(QueryVector.from_views(kept, model=model.name, policy=model.policy))
            if texts:
                vectors = model.encoder.encode_text([item.text for item in texts if item.text is not None])
                self.passes += 1
                for item, vector in zip(texts, vectors, strict=True):
                    item.done.set_result(QueryVector(vector, model=model.name))
            self.queries += len(batch)
        except Exception as exc:  # the whole pass failed: every query in it gets the error
            log.exception("encoder pass failed")
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
        elapsed = time.perf_counter() - started
        self._seconds_per_pass = 0.8 * self._seconds_per_pass + 0.2 * elapsed
