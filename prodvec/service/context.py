"""What the routes share for the life of the process: settings, the connection pool, the
query batcher, the image_url fetcher and the thumbnail cache (built by app.py's lifespan)."""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import anyio
import anyio.to_thread
import psycopg
from fastapi import Request
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from prodvec.config import catalog_policy
from prodvec.db.active_model import read_active_model
from prodvec.images.views import embedding_model
from prodvec.service.batching import QueryBatcher
from prodvec.service.fetch_guard import ImageFetcher
from prodvec.service.images import ThumbnailCache, query_photo
from prodvec.service.settings import ServiceSettings

log = logging.getLogger("prodvec.service")


@dataclass
class ServiceState:
    settings: ServiceSettings
    database_url: str
    engine: Engine  # the connection pool: ORM sessions and plain psycopg connections alike
    batcher: QueryBatcher
    fetcher: ImageFetcher
    thumbnails: ThumbnailCache
    schema_head: str  # the alembic revision a current schema is at
    #: Photos decoded at once (set in the lifespan, inside the event loop): a burst of large
    #: uploads waits its turn instead of holding a decoded full-size image per request thread.
    decode_slots: anyio.CapacityLimiter | None = None
    _switching: threading.Lock = field(default_factory=threading.Lock)

    async def decode_photo(self, data: bytes, *, source: str = "the uploaded file") -> Image.Image:
        """Upload or fetched bytes → an RGB image for the encoder, off the event loop, bounded."""
        decode = functools.partial(query_photo, data, target_size=self.batcher.encoder.input_size, source=source)
        return await anyio.to_thread.run_sync(decode, limiter=self.decode_slots)

    def follow_active_model(self) -> None:
        """Encode queries with the catalog's active model from now on, after `prodvec model
        activate` (or rollback) changed it: loaded once, then handed to the batcher."""
        from prodvec.encode import load_encoder

        with self._switching, self.connection() as conn:
            active = read_active_model(conn)
            if active is None or active.embedding_model == self.batcher.model:
                return
            log.info("the catalog's active model is now %s: loading it", active)
            encoder = load_encoder(active.spec, str(self.batcher.encoder.device))
            self.batcher.switch(encoder, catalog_policy(active.catalog_views))
            log.info("serving %s", embedding_model(active.spec, catalog_policy(active.catalog_views)))

    def session(self) -> Session:
        return Session(self.engine)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled psycopg connection (pgvector types registered), in one transaction."""
        pooled = self.engine.raw_connection()
        try:
            conn = cast(psycopg.Connection, pooled.driver_connection)
            with conn.transaction():
                yield conn
        finally:
            pooled.close()  # back to the pool


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
