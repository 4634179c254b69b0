"""The products table as a SQLAlchemy 2 typed mapping (schema itself: migrations/*.sql)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import BigInteger, ColumnElement, Numeric, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

if TYPE_CHECKING:
    from prodvec.encode import Encoder
    from prodvec.images.views import ViewPolicy
    from prodvec.search.similar import SearchResult


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(Text, default="")
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))
    stock: Mapped[int] = mapped_column(default=0)
    image: Mapped[str | None] = mapped_column(Text)
    # Dimensions follow the configured model; the database column carries them.
    embedding: Mapped[Any | None] = mapped_column(HALFVEC(), deferred=True)
    embedding_model: Mapped[str | None] = mapped_column(Text)
    embedded_image: Mapped[str | None] = mapped_column(Text)
    embedded_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default="now()", insert_default=None)
    updated_at: Mapped[datetime] = mapped_column(server_default="now()", insert_default=None)

    def __repr__(self) -> str:
        return f"Product(sku={self.sku!r}, title={self.title!r}, category={self.category!r}, price={self.price})"

    @classmethod
    def similar_to(
        cls,
        query: Any,
        *,
        session: Session,
        k: int = 10,
        where: Iterable[ColumnElement[bool]] = (),
        max_distance: float | None = None,
        robust: bool | None = None,
        encoder: Encoder | None = None,
        policy: ViewPolicy | None = None,
    ) -> SearchResult:
        """The k products nearest to ``query`` that satisfy every ``where`` clause.

        ``query``: a PIL image, a path or URL, image bytes, a vector (list / numpy array),
        a ``Product`` or ``prodvec.search.Sku("ABC-1")`` ("more like this", itself excluded).
        Nearest first, by cosine distance; ``max_distance`` drops hits farther than that.
        It holds min(k, matching products) hits: the planner picks exact or HNSW per query and
        falls back to exact when the index comes back short. ``result.exact``: every matching
        product was compared (False: the HNSW index answered).
        Image queries go through ``encoder`` (default: the catalog's active model, recorded in the
        database), the one that embedded the catalog, as views of its ``policy`` (default: the active
        model's catalog views); ModelMismatch when PRODVEC_MODEL names another; ``robust`` (default
        PRODVEC_ROBUST_QUERIES, on) searches turned and coarse views of the photo too.
        QueryError for a query that cannot be answered (unknown sku, no embedding yet...).
        """
        from prodvec.search.similar import similar_to

        return similar_to(session, query, k=k, where=tuple(where), max_distance=max_distance, robust=robust,
                          encoder=encoder, policy=policy)

    @classmethod
    def similar_to_text(
        cls,
        text: str,
        *,
        session: Session,
        k: int = 10,
        where: Iterable[ColumnElement[bool]] = (),
        max_distance: float | None = None,
        encoder: Encoder | None = None,
        policy: ViewPolicy | None = None,
    ) -> SearchResult:
        """The k products whose photos best match ``text``; QueryError for image-only models.
        ``encoder``, ``policy``: as for similar_to."""
        from prodvec.search.similar import similar_to_text

        return similar_to_text(session, text, k=k, where=tuple(where), max_distance=max_distance,
                               encoder=encoder, policy=policy)


__all__: Sequence[str] = ("Base", "Product")
