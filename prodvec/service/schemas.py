"""Requests and responses of the HTTP API as pydantic models: they validate, and OpenAPI comes from them."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_K = 100


class KnownFields(BaseModel):
    """A request model that refuses an unknown field (a typo, most often), naming the fields it takes."""

    model_config = ConfigDict(extra="forbid")
    #: A field given as "" counts as not given: what a browser's form sends for an empty input.
    empty_is_absent: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:  # checked first: an unknown field is refused even when empty
                named = ", ".join(repr(key) for key in unknown)
                raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {named} "
                                 f"(the fields are: {', '.join(cls.model_fields)})")
            if cls.empty_is_absent:
                data = {key: value for key, value in data.items() if value != ""}
        return data


class Filters(KnownFields):
    """What every search takes besides its query: SQL filters, a distance cut-off and k. Every
    field is optional, and an empty one counts as absent, from a form, a query string or JSON."""

    empty_is_absent = True

    category: list[str] | None = Field(None, description="one category or several (any of them)")
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    in_stock: bool = Field(False, description="only products with stock > 0")
    max_distance: float | None = Field(None, ge=0, le=2, description="cosine distance cut-off (0..2)")
    k: int = Field(10, ge=1, le=MAX_K, description="how many products")

    @field_validator("category", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = [item.strip() if isinstance(item, str) else item for item in value]
            value = [item for item in value if item != ""] or None
        return value

    @model_validator(mode="after")
    def _a_price_range(self) -> Filters:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(
                f"min_price {self.min_price:g} is above max_price {self.max_price:g}: no product can match")
        return self


class PhotoSearch(Filters):
    """A search by photo (an upload or image_url): the filters, and how to look at the photo."""

    robust: bool | None = Field(None, description="search the photo's turned and coarse views too "
                                                  "(default: the server's PRODVEC_ROBUST_QUERIES, on)")


class SearchRequest(PhotoSearch):
    """JSON search: exactly one of sku, text, vector or image_url, plus filters."""

    sku: str | None = Field(None, min_length=1, description="more like this product (itself excluded)")
    text: str | None = Field(None, min_length=1, description="a text query (CLIP models only)")
    vector: list[float] | None = Field(None, min_length=1, description="a query vector of the catalog's dimensions")
    image_url: str | None = Field(None, min_length=1, description="an http(s) URL of a photo the server fetches")
    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in ("sku", "text", "vector", "image_url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of sku, text, vector or image_url"
                + (f" (got {', '.join(given)})" if given else "")
                + "; to search by a photo file, POST it as multipart/form-data field 'image'"
            )
        return self


class Hit(BaseModel):
    sku: str
    title: str
    category: str
    price: float
    stock: int
    distance: float = Field(description="cosine distance to the query (0 = same direction)")
    image_url: str | None = Field(description="the product's thumbnail (/images/{sku}); None: no photo")


class SearchResponse(BaseModel):
    hits: list[Hit] = Field(description="nearest first")
    exact: bool = Field(description="every matching product was compared (False: the HNSW index answered)")
    recall: float | None = Field(
        None, description="an index answer: the recall@10 `prodvec recall` measured for such searches on this "
                          "catalog (None: exact, or not measured yet)")
    strategy: str = Field(description="exact, hnsw or hnsw+exact")
    model: str = Field(description="the model that encodes queries (and made the catalog's vectors)")
    took_ms: float
    candidates: int = Field(description="products the planner estimated the filters keep")


class Product(BaseModel):
    sku: str
    title: str
    category: str
    price: float
    stock: int
    image: str | None = Field(description="where the photo is (a path or URL), as imported")
    image_url: str | None = Field(description="the product's thumbnail (/images/{sku})")
    embedded: bool = Field(description="the product has a vector, so searches find it")
    embedding_model: str | None
    embedded_at: datetime | None
    queue: Literal["pending", "failed"] | None = Field(description="its embedding job, if one is open")
    last_error: str | None = Field(description="why the last embedding attempt failed")


class ProductWrite(KnownFields):
    """A product as `prodvec import` reads one catalog row (the sku is in the URL)."""

    title: str = ""
    category: str = ""
    price: Decimal = Field(ge=0, description="at most 2 decimals")
    stock: int = Field(0, ge=0)
    image: str | None = Field(None, description="absolute path on the server, file:// or http(s):// URL")


class ProductWritten(BaseModel):
    product: Product
    created: bool
    changed: bool = Field(description="False: it was already stored exactly so, nothing was written")
    queued: bool = Field(description="an embedding job is open for it (the worker will embed it)")


class Category(BaseModel):
    name: str
    products: int
    embedded: int


class EncoderQueue(BaseModel):
    queued: int = Field(description="image and text queries waiting for or in an encoder pass")
    limit: int = Field(description="past this many, queries are answered 503 with Retry-After")
    passes: int = Field(description="encoder forward passes since start")
    queries: int = Field(description="queries encoded since start (queries / passes: the batching)")


class ReplicaHealth(BaseModel):
    target: str = Field(description="host:port/dbname of a PRODVEC_READ_URLS replica")
    usable: bool = Field(description="at its last check it could answer reads")
    reason: str = Field(description='e.g. "lag 0.2 s", "down: connection refused", "lag 12.0 s > 5 s", '
                                    '"not checked yet"')
    age_seconds: float | None = Field(description="seconds since its last check answered; null: none has yet")


class Reads(BaseModel):
    """Where searches and lookups were answered: replicas of PRODVEC_READ_URLS, or the primary."""

    answered: dict[str, int] = Field(description="reads answered since start, per server: 'primary' or a "
                                                 "replica's host:port/dbname")
    replicas: list[ReplicaHealth] = Field(description="each replica's last check, made in the background "
                                                      "(empty: no PRODVEC_READ_URLS)")


class LoadedModel(BaseModel):
    spec: str
    catalog_views: str | None = Field(description="single or multi, as the catalog lists it (a spec may be "
                                      "listed under both); null: the model in use, no longer listed")
    loaded: bool = Field(description="in memory: activating it (or rolling back to it) switches searches at once")
    problem: str | None = Field(None, description="why this server cannot load it")


class Status(BaseModel):
    """`prodvec status`'s counts (the states add up to total; embedded = products with a vector), read
    from the primary; the encoder's queue; where reads were answered."""

    total: int
    up_to_date: int
    pending: int
    retrying: int
    failed: int
    no_image: int
    not_queued: int
    embedded: int
    oldest_pending_seconds: float | None
    model: str
    device: str
    supports_text: bool = Field(description="text queries work: the model has a text tower")
    encoder: EncoderQueue
    models: list[LoadedModel] = Field(description="the catalog's models, as this server process holds them")
    reads: Reads


class Readiness(BaseModel):
    ready: bool
    database: bool
    schema_current: bool | None = Field(
        description="the schema is at the server's migration head; null (unknown) while the database cannot be reached")
    model_loaded: bool
    problem: str | None = Field(None, description="what is not ready and what to do about it")


class ErrorMessage(BaseModel):
    error: str = Field(description="what went wrong and what to do")


#: Documented for every route: the one shape all errors have.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorMessage, "description": description}
    for status, description in {
        400: "bad request, or a body that cannot be read (not JSON, more than one photo)", 401: "no API key",
        403: "wrong API key", 404: "unknown sku", 409: "not embedded yet",
        413: "too large", 415: "not an image", 422: "invalid parameters, or a truncated or corrupt photo",
        503: "overloaded: retry after Retry-After",
    }.items()
}
