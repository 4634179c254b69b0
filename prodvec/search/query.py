"""Search queries → query vectors: images and texts through the encoder (batched), vectors as
given, products and skus by their stored embedding ("more like this", itself excluded).

Image queries are encoded under the catalog's view policy (the one the worker stored the catalog
under: PRODVEC_CATALOG_VIEWS unless the caller passes one) and carry it: search then knows which
vector columns to search and how to fuse the lists."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from prodvec.errors import ImageError, QueryError
from prodvec.models import Product
from prodvec.search import execute
from prodvec.sql import queries

if TYPE_CHECKING:  # torch and the model code load only when a query needs the encoder
    from prodvec.encode import Encoder
    from prodvec.images.views import ViewPolicy

#: Images per encoder call: bounds memory when many query images come at once.
ENCODE_BATCH = 64


@dataclass(frozen=True)
class Sku:
    """Query by a product's sku: its stored embedding, the product itself excluded."""

    sku: str


@dataclass(frozen=True)
class Text:
    """A text query (CLIP models only): ``similar_to_text`` wraps its text in one."""

    text: str


#: A PIL image, a path or URL, image bytes, a vector, a Product, a Sku or a Text.
QueryInput: TypeAlias = Any


@dataclass(frozen=True)
class QueryVector:
    vector: np.ndarray  # float32, shape (D,)
    exclude_id: int | None = None  # the query product itself
    #: Robust image queries: the turned and coarse views (prodvec.encode.robust),
    #: each searched too, the results fused.
    extra_views: tuple[np.ndarray, ...] = ()
    #: What made the vector (image and text queries): views.embedding_model of the encoder
    #: spec and the catalog's view policy; the products it is compared with must match it.
    model: str | None = None
    #: Image queries: the view policy they were encoded under. Each view is searched against
    #: each of its catalog views' columns, the lists fused with its penalties. None: the
    #: query is searched against products.embedding only.
    policy: ViewPolicy | None = None

    @classmethod
    def from_views(cls, views: np.ndarray, *, model: str, policy: ViewPolicy) -> QueryVector:
        """An image query from its encoded views (V×D, the photo view first), as encode_queries gives them."""
        return cls(views[0], extra_views=tuple(views[1:]), model=model, policy=policy)


def text_unsupported(spec: str) -> str:
    """Why a text query cannot be answered by an image-only model, and the way to one that can."""
    return (
        f"the catalog's model {spec} encodes images only, so it cannot search by text; search by image or "
        "sku, or change to a CLIP model without stopping search: prodvec model add "
        "open_clip:ViT-B-32:laion2b_s34b_b79k, prodvec worker, then prodvec model activate "
        "open_clip:ViT-B-32:laion2b_s34b_b79k"
    )


def resolve(
    session: Session,
    queries: Sequence[QueryInput],
    *,
    robust: bool | None = None,
    encoder: Encoder | None = None,
    policy: ViewPolicy | None = None,
) -> list[QueryVector]:
    """One vector per query, in order. Images go through ``encoder`` together, as views of the
    catalog's view ``policy`` (with their robust views when ``robust``), texts too.

    Each of the three left None is read from the settings (the catalog's active model and
    PRODVEC_DEVICE, its catalog views, PRODVEC_ROBUST_QUERIES), and only when an image or text
    query needs it: vector, product and already encoded queries need no encoder.
    """
    resolved: dict[int, QueryVector] = {}
    images: dict[int, Image.Image | bytes] = {}
    texts: dict[int, str] = {}
    stored: dict[int, Product | Sku] = {}
    for i, query in enumerate(queries):
        if isinstance(query, QueryVector):  # encoded by the caller (e.g. the service's batching encoder)
            resolved[i] = query
        elif isinstance(query, (Product, Sku)):
            stored[i] = query
        elif isinstance(query, Text):
            texts[i] = query.text
        elif isinstance(query, (np.ndarray, list, tuple)) or hasattr(query, "to_numpy"):
            resolved[i] = QueryVector(_as_vector(query))
        elif isinstance(query, Image.Image):
            images[i] = query
        elif isinstance(query, (bytes, bytearray, memoryview, str, os.PathLike)):
            images[i] = _image_bytes(query)  # a path or URL that fails, fails before the encoder loads
        else:
            raise QueryError(
                f"cannot search by a {type(query).__name__}: pass a PIL image, a path or URL, image bytes, "
                "a vector, a Product, a Sku or a Text"
            )
    if stored:
        resolved.update(zip(stored, _stored_vectors(session, list(stored.values())), strict=True))
    if texts or images:
        encoding = _QueryEncoding.completed(session, encoder, policy, robust, images=bool(images))
        if texts:
            resolved.update(zip(texts, encoding.encode_texts(list(texts.values())), strict=True))
        if images:
            resolved.update(zip(images, encoding.encode_images(list(images.values())), strict=True))
    return [resolved[i] for i in range(len(queries))]


@dataclass(frozen=True)
class _QueryEncoding:
    """How image and text queries become vectors."""

    encoder: Encoder
    policy: ViewPolicy
    robust: bool

    @classmethod
    def completed(
        cls, session: Session, encoder: Encoder | None, policy: ViewPolicy | None, robust: bool | None, *,
        images: bool
    ) -> _QueryEncoding:
        """The values given, the settings for those left None that the queries need (the caller
        passed none: the public search call is the edge that reads them), the encoder and
        policy those of the catalog's active model (ModelMismatch when the settings name
        another). ``robust`` matters to image queries only."""
        if encoder is None or policy is None or (images and robust is None):
            from prodvec.config import load_settings
            from prodvec.db.active_model import catalog_settings, session_connection
            from prodvec.db.model_registry import load_active_encoder

            settings = load_settings()
            if encoder is None or policy is None:
                settings = catalog_settings(session_connection(session), settings)
            encoder = encoder if encoder is not None else load_active_encoder(session_connection(session), settings)
            policy = policy if policy is not None else settings.catalog_policy
            robust = robust if robust is not None else settings.robust_queries
        return cls(encoder, policy, bool(robust))

    @property
    def model(self) -> str:
        """products.embedding_model of vectors this encoder stores under this policy."""
        from prodvec.images.views import embedding_model

        return embedding_model(self.encoder.spec, self.policy)

    def encode_images(self, queries: list[Image.Image | bytes]) -> list[QueryVector]:
        from prodvec.encode.robust import encode_queries

        images = [_as_image(query, self.encoder.input_size) for query in queries]
        per_image = encode_queries(  # N×V×D
            self.encoder, images, robust=self.robust, policy=self.policy, batch_size=ENCODE_BATCH
        )
        return [
            QueryVector.from_views(views, model=self.model, policy=self.policy)
            for views in per_image
        ]

    def encode_texts(self, texts: list[str]) -> list[QueryVector]:
        if not self.encoder.supports_text:
            raise QueryError(text_unsupported(self.encoder.spec))
        if any(not text.strip() for text in texts):
            raise QueryError("a text query must not be empty")
        # Searched against products.embedding only: the photo, fitted or not, that text describes.
        return [QueryVector(vector, model=self.model) for vector in self.encoder.encode_text(texts)]


def _as_vector(query: Any) -> np.ndarray:
    raw = query.to_numpy() if hasattr(query, "to_numpy") else query
    try:
        vector = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise QueryError("a vector query must be a flat sequence of numbers") from None
    if vector.ndim != 1 or vector.size == 0:
        raise QueryError(f"a vector query must be one flat vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        # Cosine distance to a zero (or NaN) vector is undefined: every row would tie at NaN.
        raise QueryError("a vector query must be finite and not all zeros")
    return vector


def _image_bytes(query: bytes | bytearray | memoryview | str | os.PathLike[str]) -> bytes:
    from prodvec.images.load import load_bytes

    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query)
    try:
        return load_bytes(os.fspath(query))
    except ImageError as exc:
        hint = f" (to search by sku, pass Sku({query!r}))" if isinstance(query, str) else ""
        raise QueryError(f"cannot use the query image: {exc.reason}{hint}") from None


def _as_image(query: Image.Image | bytes, target_size: int) -> Image.Image:
    from prodvec.images.decode import decode, normalize

    if isinstance(query, Image.Image):
        return normalize(query, target_size=target_size)
    try:
        return decode(query, target_size=target_size)
    except ImageError as exc:
        raise QueryError(f"cannot use the query image: {exc.reason}") from None


def _stored_vectors(session: Session, queries: list[Product | Sku]) -> list[QueryVector]:
    """The stored embeddings of the query products, looked up in one statement."""
    ids = {q.id for q in queries if isinstance(q, Product)}
    skus = {q.sku for q in queries if isinstance(q, Sku)}
    if None in ids:
        raise QueryError("the query product has no id yet: add it and flush the session first")
    rows = session.execute(
        select(Product.id, Product.sku, Product.embedding).where(Product.id.in_(ids) | Product.sku.in_(skus))
    ).all()
    by_id = {row.id: row for row in rows}
    by_sku = {row.sku: row for row in rows}
    vectors = []
    for query in queries:
        row = by_id.get(query.id) if isinstance(query, Product) else by_sku.get(query.sku)
        if row is None:
            what = f"sku {query.sku!r}" if isinstance(query, Sku) else f"id {query.id}"
            raise QueryError(f"no product with {what}")
        if row.embedding is None:
            raise QueryError(f"product {row.sku!r} has no embedding yet: {why_not_embedded(session, row.id, row.sku)}")
        vectors.append(QueryVector(np.asarray(row.embedding, dtype=np.float32), exclude_id=row.id))
    return vectors


def why_not_embedded(session: Session, product_id: int, sku: str) -> str:
    """What to do about a product without a vector: it has no photo, its photo failed (and why),
    or it waits for the worker."""
    rows = execute.fetch(session, queries("search_passes.sql")["why_not_embedded"], {"product_id": product_id})
    image, state, error = rows[0] if rows else (None, None, None)
    if not image:
        return "it has no photo to embed: give it an image"
    if state == "failed":
        return f"its photo could not be embedded ({error}): give it another image or run `prodvec retry --sku {sku}`"
    return "it is queued: run `prodvec worker` (or wait for it) and retry"
