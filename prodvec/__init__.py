"""prodvec: product image search inside PostgreSQL.

    from prodvec import Product, session

    with session() as db:
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

__all__ = ["Product", "SearchResult", "Sku", "Text", "__version__", "session"]


@cache
def _engine(url: str) -> Engine:
    from pgvector.psycopg import register_vector

    from prodvec.db.connection import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    event.listen(engine, "connect", lambda dbapi_connection, _: register_vector(dbapi_connection))
    return engine


def session(url: str | None = None) -> Session:
    """A SQLAlchemy Session on the configured database (DATABASE_URL or the embedded one)."""
    from prodvec.db.connection import database_url

    return Session(_engine(url or database_url()))
