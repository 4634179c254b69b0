"""The FastAPI application: routers, one error shape, the static page, and the lifespan that
loads the active model (the catalog's others are loaded ahead by Encoders) and opens the
connection pools (the primary's, one per read replica).

    uvicorn --factory prodvec.service.app:app_from_environment   # what `prodvec serve` runs
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import anyio
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match

import prodvec
from prodvec.encode import Encoder
from prodvec.errors import DatabaseError, DatabaseUnavailable, ProdvecError
from prodvec.logs import configure_logging
from prodvec.service import routes_ops, routes_products, routes_search
from prodvec.service.batching import QueryBatcher
from prodvec.service.body_limit import BodyLimit
from prodvec.service.context import ServiceState, service_state
from prodvec.service.encoders import Encoders
from prodvec.service.errors import ApiError, validation_problem
from prodvec.service.fetch_guard import Connector, ImageFetcher, Resolver, system_connector, system_resolver
from prodvec.service.images import ThumbnailCache
from prodvec.service.reads import ReadTargets
from prodvec.service.security import key_refusal, may_read, request_key
from prodvec.service.settings import ServiceSettings, service_settings

log = logging.getLogger("prodvec.service")
STATIC_DIR = Path(str(files("prodvec.service") / "static"))
#: The API's routers, included as they are (no prefix): their routes' paths are the app's.
ROUTERS = (routes_search.router, routes_products.reads, routes_products.writes, routes_products.images,
           routes_ops.router)


def app_from_environment() -> FastAPI:
    """The app as configured by the environment: the factory `prodvec serve` hands uvicorn. It sets
    up prodvec's logging too, at the level `prodvec serve` was given (PRODVEC_LOG_LEVEL): each
    --workers process is a fresh interpreter that never ran the command line's setup."""
    settings = service_settings()
    configure_logging(verbose=settings.log_level == "debug", quiet=settings.log_level == "warning")
    return create_app(settings)


def create_app(
    settings: ServiceSettings,
    *,
    encoder: Encoder | None = None,
    resolver: Resolver = system_resolver,
    connector: Connector = system_connector,
) -> FastAPI:
    """The service. ``encoder``: an already loaded one (tests); default the catalog's active
    model's, loaded at startup. ``resolver``/``connector``: how image_url hosts are resolved and reached."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(_open, settings, encoder, ImageFetcher(
            settings.fetch_allow, settings.max_upload_bytes, resolver=resolver, connector=connector))
        state.decode_slots = anyio.CapacityLimiter(os.cpu_count() or 1)
        app.state.service = state
        log.info("serving %s on %s", state.batcher.model, state.batcher.encoder.device)
        try:
            await run_in_threadpool(state.reads.start)  # waits up to a connect timeout: off the event loop
            state.encoders.start(state.catalog_models, lambda: state.batcher.encoder.spec)
            yield
        finally:
            state.encoders.stop()
            await run_in_threadpool(state.batcher.close)
            await run_in_threadpool(state.reads.dispose)  # joins the checker, which may be mid-check
            state.engine.dispose()

    # /docs (Swagger UI) and /redoc from files installed with fastapi-offline, not from a CDN:
    # prodvec's servers and their users may have no internet.
    app = FastAPIOffline(
        title="prodvec", version=prodvec.__version__, lifespan=lifespan,
        description="Product image search inside PostgreSQL: a photo, a text or a sku in, similar products out, "
                    "with category, price and stock filters. Errors are JSON: {\"error\": \"what to do\"}.",
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    for router in ROUTERS:
        app.include_router(router)
    _add_error_handlers(app)
    _add_page(app)
    return app


def _open(settings: ServiceSettings, encoder: Encoder | None, fetcher: ImageFetcher) -> ServiceState:
    from alembic.script import ScriptDirectory

    from prodvec.db.active_model import catalog_settings
    from prodvec.db.connection import database_url
    from prodvec.db.migrate import alembic_config
    from prodvec.encode import load_encoder

    url = database_url(settings.prodvec)
    # The catalog's active model, as every other process uses it. A plain connection: an
    # unmigrated database (no pgvector types yet) still serves /readyz, which says to migrate.
    with psycopg.connect(url) as conn:
        catalog = catalog_settings(conn, settings.prodvec)
    loaded = encoder or load_encoder(catalog.model, catalog.device)
    batcher = QueryBatcher(
        loaded, policy=catalog.catalog_policy, robust=catalog.robust_queries,
        limit=settings.queue_limit, window_seconds=settings.batch_window_seconds, max_batch=settings.max_batch,
    )
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head() or ""
    primary = _engine(url, settings)
    reads = ReadTargets(url, primary, settings.prodvec.read_urls, settings.prodvec.max_replica_lag,
                        lambda replica_url: _engine(replica_url, settings))
    if settings.prodvec.read_urls:
        log.info("searches and lookups read from %d replica(s) within %g s of the primary, else the primary",
                 len(settings.prodvec.read_urls), settings.prodvec.max_replica_lag)
    return ServiceState(settings=settings, database_url=url, engine=primary, reads=reads, batcher=batcher,
                        encoders=Encoders(loaded, preload=settings.preload_models), fetcher=fetcher,
                        thumbnails=ThumbnailCache(), schema_head=head)


def _engine(url: str, settings: ServiceSettings) -> Engine:
    """One server's connection pool, at most 2 × PRODVEC_DB_POOL connections. Statements stop at
    the request timeout, so no search holds a connection (and a thread) after its client was
    answered 504."""
    from prodvec.db.connection import register_pgvector, sqlalchemy_url

    timeout_ms = round(settings.request_timeout_seconds * 1000)
    engine = create_engine(
        sqlalchemy_url(url), pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size,
        pool_pre_ping=True, connect_args={"options": f"-c statement_timeout={timeout_ms}"},
    )
    event.listen(engine, "connect", lambda dbapi_connection, _: register_pgvector(dbapi_connection))
    return engine


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers ``{"error": message}`` with its status."""

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, str(exc), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        problem = await key_refusal(request) or validation_problem(exc.errors(), exc.body, media_type)
        return error(problem.status, str(problem), problem.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return method_not_allowed(request, exc)
        message = f"no such endpoint {request.url.path}: see /docs" if exc.detail == "Not Found" else exc.detail
        return error(exc.status_code, str(message), exc.headers)

    def method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
        """405, naming the methods the path takes: every route's at the path (Starlette's Allow
        names only the first route's, GET for /v1/products/{sku}, which PUT and DELETE share)."""
        methods = [method for router in ROUTERS for route in router.routes
                   if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE
                   for method in sorted(route.methods or ())]
        allow = ", ".join(methods) or (exc.headers or {}).get("Allow", "")  # the page's, the static files'
        takes = f": it takes {' or '.join(allow.rsplit(', ', 1))}" if allow else ""
        return error(405, f"{request.method} is not allowed on {request.url.path}{takes} (see /docs)",
                     {**(exc.headers or {}), "Allow": allow})

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        return await unavailable(request, exc.orig)

    @app.exception_handler(psycopg.OperationalError)  # raw, from a pooled psycopg connection
    async def connection_error(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        return await unavailable(request, exc)

    async def unavailable(request: Request, cause: BaseException | None) -> JSONResponse:
        log.warning("database error: %s", " ".join(str(cause).split()))  # psycopg's: lines, tab-indented
        if isinstance(cause, psycopg.errors.QueryCanceled):  # statement_timeout
            message = "the database is too slow right now: retry in a moment"
        elif isinstance(cause, psycopg.OperationalError):
            message = (f"the database cannot be reached: retry in a moment; if it stays so, "
                       f"{service_state(request).database_advice()}")
        else:
            message = "the database is unavailable or too slow right now: retry in a moment"
        return await database_problem(request, message, {"Retry-After": "5"})

    async def database_problem(request: Request, message: str, headers: Mapping[str, str] | None) -> JSONResponse:
        """503, the server's problem. The open routes (thumbnails, /readyz) answer anyone who can
        reach a keyed server: without a valid key, the message names no host, error or path."""
        if not may_read(app.state.settings, await request_key(request)):
            message = "the database is unavailable right now: retry in a moment"
        return error(503, message, headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # logged by the server
        return error(500, "internal server error: the server log has the details; please report it")

    @app.exception_handler(ProdvecError)
    async def prodvec_error(request: Request, exc: ProdvecError) -> JSONResponse:
        if isinstance(exc, DatabaseUnavailable):
            return await database_problem(request, str(exc), {"Retry-After": "5"})
        if isinstance(exc, DatabaseError):  # e.g. no schema yet: the server's problem, not the request's
            return await database_problem(request, str(exc), None)
        return error(400, str(exc))


def _add_page(app: FastAPI) -> None:
    """The page at / and its files at /static (prodvec/service/static, package data)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(404, "the page is not installed (prodvec/service/static/index.html): use the API")
        return FileResponse(index)
