"""prodvec: product image search inside PostgreSQL.

    from prodvec import Product, session

    with read_session() as db:  # session(): the primary, for writes too
        for hit in Product.similar_to("shoe.jpg", session=db, where=[Product.price < 50]):
            print(hit.product.sku, hit.distance)
"""
from __future__ import annotations

from functools import cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from prodvec.models import Product
from prodvec.search import SearchResult, Sku, Text

__version__ = "0.2.0"

__all__ = ["Product", "SearchResult", "Sku", "Text", "__version__", "read_engine", "read_session", "session"]


@cache
def _engine(url: str) -> Engine:
    from prodvec.db.connection import register_pgvector, sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    event.listen(engine, "connect", lambda dbapi_connection, _: register_pgvector(dbapi_connection))
    return engine


def session(url: str | None = None) -> Session:
    """A SQLAlchemy Session on the configured database (DATABASE_URL or the embedded one)."""
    from prodvec.db.connection import database_url

    return Session(_engine(url or database_url()))


def read_engine(url: str | None = None) -> Engine:
    """The engine a search reads through: a hot-standby replica of PRODVEC_READ_URLS that is up
    and within PRODVEC_MAX_REPLICA_LAG of the primary, in turn, else the primary (``url``, or
    DATABASE_URL / the embedded one). Ask again per search or request: the choice follows the
    replicas' health (prodvec/db/replicas.py)."""
    from prodvec.config import load_settings
    from prodvec.db.connection import database_url
    from prodvec.db.replicas import read_url

    settings = load_settings()
    return _engine(read_url(settings, url or database_url(settings)))


def read_session(url: str | None = None) -> Session:
    """A SQLAlchemy Session for searches, on read_engine(): read-only when a replica answers."""
    return Session(read_engine(url))
