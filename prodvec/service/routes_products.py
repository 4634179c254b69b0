"""Products: read one, the categories, thumbnails, and the admin writes (PUT / DELETE).

Writes go through the catalog importer's own row checks and upsert (``prodvec.catalog``), so a
product PUT here is stored and queued for embedding exactly as `prodvec import` would. Writes
and the product a write answers with use the primary; the other reads may come from a replica
(prodvec/service/reads.py).
"""
from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from prodvec.catalog.importer import upsert_rows
from prodvec.catalog.rows import parse_row
from prodvec.errors import CatalogRowError
from prodvec.service import schemas
from prodvec.service.context import service_state, transaction
from prodvec.service.errors import ApiError, NotFound
from prodvec.service.images import make_thumbnail, thumbnail_etag, thumbnail_path
from prodvec.service.reads import READ_FROM_HEADER
from prodvec.service.security import require_admin_key, require_read_key
from prodvec.sql import queries

_SQL = queries("service.sql")
#: Thumbnails change only with their product (the ETag says which): browsers may reuse them a while.
THUMBNAIL_CACHE_CONTROL = "public, max-age=3600"

reads = APIRouter(dependencies=[Depends(require_read_key)], tags=["products"], responses=schemas.ERROR_RESPONSES)
writes = APIRouter(dependencies=[Depends(require_admin_key)], tags=["admin"], responses=schemas.ERROR_RESPONSES)
images = APIRouter(tags=["products"])


class InvalidProduct(ApiError):
    status = 422


@reads.get("/v1/products/{sku}", response_model=schemas.Product, summary="One product and its embedding state")
async def product(request: Request, response: Response, sku: str) -> schemas.Product:
    root = request.scope.get("root_path", "")
    found, role = await run_in_threadpool(service_state(request).reads.read, lambda engine: _product(engine, sku, root))
    response.headers[READ_FROM_HEADER] = role
    return found


@reads.get("/v1/categories", response_model=list[schemas.Category], summary="Categories and their product counts")
async def categories(request: Request, response: Response) -> list[schemas.Category]:
    def read(engine: Engine) -> list[schemas.Category]:
        with transaction(engine) as conn, conn.cursor() as cur:
            rows = cur.execute(_SQL["categories"]).fetchall()
            return [schemas.Category(name=name, products=count, embedded=embedded) for name, count, embedded in rows]

    found, role = await run_in_threadpool(service_state(request).reads.read, read)
    response.headers[READ_FROM_HEADER] = role
    return found


@writes.put("/v1/products/{sku}", response_model=schemas.ProductWritten,
            summary="Insert or update a product; a new or changed photo is queued for embedding")
async def put_product(request: Request, sku: str, body: schemas.ProductWrite) -> schemas.ProductWritten:
    state = service_state(request)
    try:
        # Relative image paths resolve against the server's working directory, as an import
        # resolves them against the catalog file's folder.
        row = parse_row({"sku": sku, **body.model_dump()}, 0, os.getcwd())
    except CatalogRowError as exc:
        raise InvalidProduct(f"{exc.reason}: correct it and send the product again") from None

    def write() -> tuple[int, int]:
        with state.connection() as conn:
            return upsert_rows(conn, [row])

    inserted, updated = await run_in_threadpool(write)
    stored = await run_in_threadpool(_product, state.engine, row.sku, request.scope.get("root_path", ""))
    return schemas.ProductWritten(product=stored, created=bool(inserted), changed=bool(inserted or updated),
                                  queued=stored.queue == "pending")


@writes.delete("/v1/products/{sku}", status_code=204, summary="Delete a product (and its embedding job)")
async def delete_product(request: Request, sku: str) -> Response:
    def delete() -> bool:
        with service_state(request).connection() as conn:
            return conn.execute(_SQL["delete_product"], {"sku": sku}).fetchone() is not None

    if not await run_in_threadpool(delete):
        raise NotFound(f"no product with sku {sku!r}: nothing was deleted")
    return Response(status_code=204)


@images.get("/images/{sku}", response_class=Response, summary="The product's photo as a small JPEG thumbnail",
            responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}, 404: {}})
async def thumbnail(
    request: Request, sku: str, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    """Open to all (no key): an ``<img>`` tag cannot send one, and shops show these photos anyway."""
    state = service_state(request)
    row, _ = await run_in_threadpool(state.reads.read, lambda engine: _product_row(engine, sku))
    if not row["image"]:
        raise NotFound(f"product {sku!r} has no photo")
    etag = thumbnail_etag(row["image"], row["updated_at"])
    headers = {"ETag": etag, "Cache-Control": THUMBNAIL_CACHE_CONTROL}
    if if_none_match and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    body = await run_in_threadpool(
        state.thumbnails.get, etag, lambda: make_thumbnail(row["image"])
    )
    return Response(body, media_type="image/jpeg", headers=headers)


def _product_row(engine: Engine, sku: str) -> dict[str, Any]:
    with transaction(engine) as conn, conn.cursor() as cur:
        cur.execute(_SQL["product"], {"sku": sku})
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no product with sku {sku!r}: check the sku")
        names = [column.name for column in cur.description or ()]
        return dict(zip(names, row, strict=True))


def _product(engine: Engine, sku: str, root: str) -> schemas.Product:
    row = _product_row(engine, sku)
    del row["updated_at"]
    row["price"] = float(row["price"])
    return schemas.Product(**row, image_url=thumbnail_path(root, sku) if row["image"] else None)
