"""POST /v1/search (a photo, a text, a sku, a vector or an image_url) and GET /v1/products/{sku}/similar.

Photos and texts are encoded by the shared query batcher, then searched with prodvec's own
filtered search (``prodvec.search.similar_to``: complete, planned per query) in the thread pool,
so the event loop keeps answering while the encoder and the database work. The database part
reads from a replica when one is usable (prodvec/service/reads.py); the X-Prodvec-Read-From
header says whether a replica or the primary answered.
"""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Annotated, Any, cast

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Engine, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from prodvec.catalog.categories import unknown_category
from prodvec.config import CatalogViews
from prodvec.db.active_model import session_connection
from prodvec.errors import ModelChanged, QueryError
from prodvec.models import Product
from prodvec.search import SearchResult, similar_to
from prodvec.search.query import QueryInput, why_not_embedded
from prodvec.service import schemas
from prodvec.service.context import ServiceState, service_state
from prodvec.service.errors import (
    BadRequest,
    Conflict,
    InvalidRequest,
    NotFound,
    TimedOut,
    UnknownCategory,
    UnsupportedMedia,
)
from prodvec.service.images import thumbnail_path
from prodvec.service.reads import READ_FROM_HEADER, Role
from prodvec.service.security import require_read_key

router = APIRouter(dependencies=[Depends(require_read_key)], tags=["search"])

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_MAX_FORM_FIELDS = 64  # the filters, each category repeated: more is not a search
_HOW = ("POST a JSON object with one of sku, text, vector or image_url (and filters), "
        "or a multipart/form-data form with the photo in the field 'image'")
_FORM_FIELDS = {
    "image": {"type": "string", "format": "binary", "description": "the query photo"},
    **{name: field for name, field in schemas.PhotoSearch.model_json_schema()["properties"].items()},
    "sku": {"type": "string"}, "text": {"type": "string"}, "image_url": {"type": "string"},
}
_SEARCH_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": schemas.SearchRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "properties": _FORM_FIELDS}},
}}}


@router.post("/v1/search", response_model=schemas.SearchResponse, responses=schemas.ERROR_RESPONSES,
             openapi_extra=_SEARCH_BODY, summary="Products like a photo, a text, a sku, a vector or an image_url")
async def search(request: Request, response: Response) -> schemas.SearchResponse:
    state = service_state(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        query, options = await _from_form(request)
    elif content_type == "application/json":
        body = await request.body()
        if not body.strip():
            raise BadRequest(f"the request body is empty: {_HOW}")
        options = _validated(schemas.SearchRequest, body)
        query = None
    else:
        if not await request.body():
            raise BadRequest(f"the request body is empty: {_HOW}")
        raise UnsupportedMedia(f"cannot read a {content_type or 'untyped'} body: {_HOW}")
    return await _answer(request, response, state, query, options)


@router.get("/v1/products/{sku}/similar", response_model=schemas.SearchResponse, responses=schemas.ERROR_RESPONSES,
            summary="More like this product (itself excluded)")
async def similar(request: Request, response: Response, sku: str,
                  filters: Annotated[schemas.Filters, Query()]) -> schemas.SearchResponse:
    options = schemas.SearchRequest(sku=sku, **filters.model_dump())
    return await _answer(request, response, service_state(request), None, options)


async def _from_form(request: Request) -> tuple[Image.Image | None, schemas.SearchRequest | schemas.PhotoSearch]:
    state = service_state(request)
    form = await _read_form(request)
    try:
        fields: dict[str, Any] = {key: form.getlist(key) if key == "category" else form[key]
                                  for key in form if key != "image"}
        upload = form.get("image")
        if upload is None:
            misplaced = next((key for key in form if isinstance(form[key], UploadFile)), None)
            if misplaced is not None:
                raise InvalidRequest(f"invalid request: unknown field {misplaced!r}: send the photo in the field "
                                     "'image' (curl -F image=@photo.jpg)")
            return None, _validated(schemas.SearchRequest, fields)
        if not isinstance(upload, UploadFile):
            raise BadRequest("the field 'image' must be a file: send it as a file part (curl -F image=@photo.jpg)")
        options = _validated(schemas.PhotoSearch, fields)
        data = await upload.read()
    finally:
        await form.close()
    photo = await state.decode_photo(data)
    return photo, options


async def _read_form(request: Request) -> FormData:
    """The form, parsed within its bounds (one file, few fields). Starlette refuses one past them
    with a 400 HTTPException whose English text is all it says; told here in prodvec's words."""
    try:
        return await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    except HTTPException as exc:
        if exc.status_code != 400:  # BodyLimit's 413, already in prodvec's words
            raise
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            raise BadRequest("send one photo per search, in the field 'image' (curl -F image=@photo.jpg)") from None
        if detail.startswith("Too many fields"):
            raise BadRequest(f"the form has more than {_MAX_FORM_FIELDS} fields: send the photo in the field "
                             "'image' and the filters, nothing else") from None
        raise BadRequest(f"the form cannot be read ({detail.rstrip('.')}): send multipart/form-data as "
                         "curl -F image=@photo.jpg does") from None


def _validated(model: type[schemas.PhotoSearch], data: bytes | dict[str, Any]) -> Any:
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _answer(
    request: Request, response: Response, state: ServiceState, photo: Image.Image | None,
    options: schemas.PhotoSearch,
) -> schemas.SearchResponse:
    started = time.perf_counter()
    try:
        answer, role = await asyncio.wait_for(_search(request, state, photo, options, started),
                                              state.settings.request_timeout_seconds)
    except asyncio.TimeoutError:
        raise TimedOut(
            f"the search took longer than {state.settings.request_timeout_seconds:g} s: retry, or narrow it"
        ) from None
    response.headers[READ_FROM_HEADER] = role
    return answer


async def _search(
    request: Request, state: ServiceState, photo: Image.Image | None, options: schemas.PhotoSearch, started: float
) -> tuple[schemas.SearchResponse, Role]:
    if photo is None and isinstance(options, schemas.SearchRequest) and options.image_url is not None:
        data = await run_in_threadpool(state.fetcher.fetch, options.image_url)
        photo = await state.decode_photo(data, source="the photo at image_url")
    root = request.scope.get("root_path", "")

    async def search() -> tuple[schemas.SearchResponse, Role]:
        query, model = await _query(state, photo, options), state.batcher.model
        return await run_in_threadpool(
            state.reads.read, lambda engine: _search_database(engine, model, query, options, root, started))

    try:
        return await search()
    except ModelChanged as changed:  # `prodvec model activate` since the query was encoded: again, with that model
        await run_in_threadpool(state.follow_model, changed.spec, cast(CatalogViews, changed.catalog_views))
        return await search()


async def _query(state: ServiceState, photo: Image.Image | None, options: schemas.PhotoSearch) -> QueryInput:
    """What to search by: the photo or text encoded, the vector, or the sku."""
    if photo is not None:
        return await state.batcher.encode_image(photo, robust=options.robust)
    if isinstance(options, schemas.SearchRequest) and options.text is not None:
        if not options.text.strip():
            raise BadRequest("the text is blank: describe what to find")
        return await state.batcher.encode_text(options.text)
    if isinstance(options, schemas.SearchRequest) and options.vector is not None:
        return np.asarray(options.vector, dtype=np.float32)
    assert isinstance(options, schemas.SearchRequest) and options.sku is not None  # one query: validated
    return options.sku


def _search_database(
    engine: Engine, model: str, query: QueryInput, options: schemas.PhotoSearch, root: str, started: float
) -> schemas.SearchResponse:
    with Session(engine) as session:
        for category in options.category or ():
            problem = unknown_category(session_connection(session), category)
            if problem:
                raise UnknownCategory(f"{problem} (GET /v1/categories lists them)")
        if isinstance(query, str):  # a sku: its own stored vector, itself excluded
            product = session.scalar(select(Product).where(Product.sku == query))
            if product is None:
                raise NotFound(f"no product with sku {query!r}: check the sku (GET /v1/products/{{sku}})")
            if product.embedded_at is None:  # written with its vector, which stays until a new one replaces it
                raise Conflict(f"product {query!r} has no embedding yet: "
                               f"{why_not_embedded(session, product.id, product.sku)}")
            query = product
        try:
            result = similar_to(session, query, k=options.k, where=where_clauses(options),
                                max_distance=options.max_distance)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        return _response(result, model, root, started)


def where_clauses(filters: schemas.Filters) -> list[ColumnElement[bool]]:
    """The filters as SQL clauses on Product, as prodvec.search takes them."""
    clauses: list[ColumnElement[bool]] = []
    if filters.category:
        clauses.append(Product.category.in_(filters.category))
    if filters.min_price is not None:
        clauses.append(Product.price >= Decimal(str(filters.min_price)))
    if filters.max_price is not None:
        clauses.append(Product.price <= Decimal(str(filters.max_price)))
    if filters.in_stock:
        clauses.append(Product.stock > 0)
    return clauses


def _response(result: SearchResult, model: str, root: str, started: float) -> schemas.SearchResponse:
    hits = [
        schemas.Hit(sku=hit.product.sku, title=hit.product.title, category=hit.product.category,
                    price=float(hit.product.price), stock=hit.product.stock, distance=round(hit.distance, 6),
                    image_url=thumbnail_path(root, hit.product.sku) if hit.product.image else None)
        for hit in result
    ]
    return schemas.SearchResponse(hits=hits, exact=result.exact, recall=result.recall, strategy=result.strategy,
                                  model=result.model or model, took_ms=round((time.perf_counter() - started) * 1000, 2),
                                  candidates=result.candidates)
