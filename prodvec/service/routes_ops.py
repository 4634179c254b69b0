"""Operations: /healthz (the process lives), /readyz (it can answer searches), /v1/status (the queue,
the encoder, where reads were answered). The queue and readiness are read from the primary: they
must be current."""
from __future__ import annotations

import time
from typing import Annotated, cast

import psycopg
from alembic.runtime.migration import MigrationContext
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from prodvec import queue as jobs
from prodvec.db.migrate import embedding_dimensions
from prodvec.db.replicas import describe
from prodvec.errors import ProdvecError, SchemaMismatch
from prodvec.service import schemas
from prodvec.service.context import ServiceState, service_state
from prodvec.service.security import may_read, presented_key, require_read_key

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=schemas.Readiness, summary="Database reachable, schema current, model loaded",
            responses={503: {"model": schemas.Readiness, "description": "not ready: see problem"}})
async def readyz(request: Request, key: Annotated[str | None, Security(presented_key)]) -> JSONResponse:
    state = service_state(request)
    readiness = await run_in_threadpool(_readiness, state)
    if readiness.problem and not may_read(state.settings, key):
        # Open to load balancers, so without a key it tells what is not ready, not the database's
        # host and error.
        readiness = readiness.model_copy(update={"problem": _WITHOUT_KEY})
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


_WITHOUT_KEY = ("not ready (database, schema_current and model_loaded say which part): "
                "ask /readyz with an API key for the reason and what to do")


@router.get("/v1/status", response_model=schemas.Status, dependencies=[Depends(require_read_key)],
            responses=schemas.ERROR_RESPONSES, summary="Products embedded, pending, failed; the encoder queue")
async def status(request: Request) -> schemas.Status:
    state = service_state(request)

    def read() -> jobs.QueueStatus:
        with state.connection() as conn:
            return jobs.status(conn)

    counts = await run_in_threadpool(read)
    batcher = state.batcher
    return schemas.Status(
        total=counts.total, up_to_date=counts.up_to_date, pending=counts.pending, retrying=counts.retrying,
        failed=counts.failed, no_image=counts.no_image, not_queued=counts.not_queued, embedded=counts.embedded,
        oldest_pending_seconds=counts.oldest_pending_seconds, model=batcher.model, device=str(batcher.encoder.device),
        supports_text=batcher.encoder.supports_text,
        encoder=schemas.EncoderQueue(queued=batcher.queued, limit=batcher.limit, passes=batcher.passes,
                                     queries=batcher.queries),
        models=[schemas.LoadedModel(spec=model.spec, catalog_views=model.catalog_views, loaded=model.loaded,
                                    problem=model.problem)
                for model in state.encoders.states()],
        reads=schemas.Reads(answered=state.reads.answered(), replicas=[
            schemas.ReplicaHealth(target=describe(replica.url), usable=replica.usable, reason=replica.reason,
                                  age_seconds=None if replica.checked_at is None
                                  else round(time.monotonic() - replica.checked_at, 1))
            for replica in state.reads.states()]),
    )


def _readiness(state: ServiceState) -> schemas.Readiness:
    try:
        with state.engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
            dimensions = embedding_dimensions(cast(psycopg.Connection, connection.connection.driver_connection))
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.OperationalError):
            reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__  # libpq's lines as one
            unreachable = f"the database cannot be reached ({reason}): {state.database_advice()}"
            return schemas.Readiness(ready=False, database=False, schema_current=None, model_loaded=True,
                                     problem=unreachable)  # the schema cannot be checked: unknown
        return schemas.Readiness(ready=False, database=True, schema_current=False, model_loaded=True,
                                 problem=f"the database has no prodvec schema ({exc.orig}): run `prodvec migrate`")
    except SchemaMismatch as exc:  # reached, but a new connection cannot set up pgvector's types
        return schemas.Readiness(ready=False, database=True, schema_current=False, model_loaded=True,
                                 problem=str(exc))
    if revision != state.schema_head:
        return schemas.Readiness(
            ready=False, database=True, schema_current=False, model_loaded=True,
            problem=f"the schema is at revision {revision or 'none'}, not {state.schema_head}: run `prodvec migrate`",
        )
    try:
        state.follow_active_model()  # a model activated since the last search
    except ProdvecError as exc:  # one this machine cannot load
        return schemas.Readiness(ready=False, database=True, schema_current=True, model_loaded=False, problem=str(exc))
    encoder = state.batcher.encoder
    problem: str | None = None
    if dimensions != encoder.dimensions:
        problem = (f"products.embedding has {dimensions} dimensions but {encoder.spec} makes {encoder.dimensions}: "
                   "run `prodvec migrate` (the column was changed by hand?)")
    return schemas.Readiness(ready=problem is None, database=True, schema_current=problem is None,
                             model_loaded=True, problem=problem)
