"""What the routes share for the life of the process: settings, the connection pools, the
query batcher, the image_url fetcher and the thumbnail cache (built by app.py's lifespan)."""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import cast

import anyio
import anyio.to_thread
import psycopg
from fastapi import Request
from PIL import Image
from sqlalchemy import Engine

from prodvec.config import CatalogViews, catalog_policy
from prodvec.db.active_model import read_active_model
from prodvec.db.connection import names_embedded_server
from prodvec.db.model_registry import list_models
from prodvec.db.replicas import describe
from prodvec.images.views import embedding_model
from prodvec.service.batching import QueryBatcher
from prodvec.service.encoders import CatalogEntry, Encoders
from prodvec.service.fetch_guard import ImageFetcher
from prodvec.service.images import ThumbnailCache, query_photo
from prodvec.service.reads import ReadTargets
from prodvec.service.settings import ServiceSettings

log = logging.getLogger("prodvec.service")


@dataclass
class ServiceState:
    settings: ServiceSettings
    database_url: str
    engine: Engine  # the primary's connection pool: ORM sessions and plain psycopg connections alike
    reads: ReadTargets  # where searches and lookups read: a replica's pool when one is usable, else engine
    batcher: QueryBatcher
    encoders: Encoders  # the batcher's, and the catalog's other models loaded ahead
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

    def database_advice(self) -> str:
        """What to do when the primary cannot be reached: start the embedded server, or check
        one's own. Told apart by the URL (`prodvec serve` hands its workers the embedded server's
        URL as DATABASE_URL): the embedded server listens on a socket in its data directory."""
        pgdata = self.settings.prodvec.pgdata
        if names_embedded_server(self.database_url, pgdata):
            return f"start the embedded database with `prodvec db start` (its data is in {pgdata.resolve()})"
        return (f"check that the PostgreSQL server at {describe(self.database_url)} is running and that "
                "DATABASE_URL names it")

    def connection(self) -> AbstractContextManager[psycopg.Connection]:
        """A pooled psycopg connection to the primary, in one transaction."""
        return transaction(self.engine)

    def follow_active_model(self) -> None:
        """Encode queries with the primary's active model (after `prodvec model activate`)."""
        with self.connection() as conn:
            active = read_active_model(conn)
        if active is not None:
            self.follow_model(active.spec, active.catalog_views)

    def follow_model(self, spec: str, catalog_views: CatalogViews) -> None:
        """Encode queries with this model from the next encoder pass on: the model active where a
        search ran (a replica may switch a little after the primary). Loaded once per process."""
        policy = catalog_policy(catalog_views)
        with self._switching:
            if embedding_model(spec, policy) == self.batcher.model:
                return
            log.info("the catalog's active model is now %s (%s catalog views): searches encode with it", spec,
                     catalog_views)
            self.batcher.switch(self.encoders.get(spec), policy)

    def catalog_models(self) -> list[CatalogEntry]:
        """The models the catalog lists, with their catalog views (Encoders loads them ahead)."""
        with self.connection() as conn:
            return [(model.spec, model.catalog_views) for model in list_models(conn)]


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
