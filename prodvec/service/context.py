"""What the routes share for the life of the process: settings, the connection pools, the
query batcher, the image_url fetcher and the thumbnail cache (built by app.py's lifespan)."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import cast

import anyio
import anyio.to_thread
import psycopg
from fastapi import Request
from PIL import Image
from sqlalchemy import Engine

from prodvec.service.batching import QueryBatcher
from prodvec.service.fetch_guard import ImageFetcher
from prodvec.service.images import ThumbnailCache, query_photo
from prodvec.service.reads import ReadTargets
from prodvec.service.settings import ServiceSettings


@dataclass
class ServiceState:
    settings: ServiceSettings
    database_url: str
    engine: Engine  # the primary's connection pool: ORM sessions and plain psycopg connections alike
    reads: ReadTargets  # where searches and lookups read: a replica's pool when one is usable, else engine
    batcher: QueryBatcher
    fetcher: ImageFetcher
    thumbnails: ThumbnailCache
    schema_head: str  # the alembic revision a current schema is at
    #: Photos decoded at once (set in the lifespan, inside the event loop): a burst of large
    #: uploads waits its turn instead of holding a decoded full-size image per request thread.
    decode_slots: anyio.CapacityLimiter | None = None

    async def decode_photo(self, data: bytes, *, source: str = "the uploaded file") -> Image.Image:
        """Upload or fetched bytes → an RGB image for the encoder, off the event loop, bounded."""
        decode = functools.partial(query_photo, data, target_size=self.batcher.encoder.input_size, source=source)
        return await anyio.to_thread.run_sync(decode, limiter=self.decode_slots)

    def connection(self) -> AbstractContextManager[psycopg.Connection]:
        """A pooled psycopg connection to the primary, in one transaction."""
        return transaction(self.engine)


@contextmanager
def transaction(engine: Engine) -> Iterator[psycopg.Connection]:
    """A psycopg connection from ``engine``'s pool (pgvector types registered), in one transaction."""
    pooled = engine.raw_connection()
    try:
        conn = cast(psycopg.Connection, pooled.driver_connection)
        with conn.transaction():
            yield conn
    finally:
        pooled.close()  # back to the pool


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
