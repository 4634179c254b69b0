"""The catalog's models side by side (migrations/0009_model_versions.sql): add one beside the
active model, let the worker backfill it, activate it in a short switch, roll back, drop.

products.embedding always holds the active model's vectors; another model's live in its own
columns (`embedding_m<id>`, ...) with its own indexes until it is activated, when columns,
indexes and recall settings swap names in one transaction. That transaction waits for searches
and writes in flight and makes new ones wait behind it, so it runs with a short lock_timeout
and is retried: a long import or a forgotten open transaction delays the switch, not search.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from prodvec.config import CatalogViews, Settings, catalog_policy
from prodvec.db.active_model import ActiveModel, read_active_model
from prodvec.db.migrate import raised_as_schema_mismatch
from prodvec.errors import ConfigError, SchemaMismatch, WeightsUnavailable
from prodvec.images.views import embedding_model
from prodvec.sql import queries

if TYPE_CHECKING:  # torch loads only where an encoder is loaded
    from prodvec.encode import Encoder

log = logging.getLogger("prodvec.model")

_SQL = queries("model.sql")
#: How long one try of a switch may wait for the table (searches queue behind it meanwhile).
SWITCH_LOCK_TIMEOUT_MS = 500
SWITCH_TRIES = 20


@dataclass(frozen=True)
class CatalogModel:
    """A model of the catalog (embedding_models), with how far its vectors cover the products."""

    id: int
    spec: str
    dimensions: int
    catalog_views: CatalogViews
    active: bool
    added_at: datetime
    activated_at: datetime | None
    deactivated_at: datetime | None

    @property
    def embedding_model(self) -> str:
        """What products.embedding_model says of this model's vectors."""
        return embedding_model(self.spec, catalog_policy(self.catalog_views))

    @property
    def as_active(self) -> ActiveModel:
        return ActiveModel(self.spec, self.dimensions, self.catalog_views)

    def column(self, name: str) -> str:
        """Where this model's ``name`` column (embedding, embedding_coarse, ...) is now."""
        return name if self.active else f"{name}_m{self.id}"

    def __str__(self) -> str:
        return str(self.as_active)


@dataclass(frozen=True)
class Coverage:
    """A model's progress: products with a vector of it, jobs waiting or failed, and how many
    products it still lacks before it can take over (0 for the active model)."""

    embedded: int
    pending: int
    failed: int
    behind: int


def list_models(conn: psycopg.Connection) -> list[CatalogModel]:
    """Every model of the catalog, the active one first; [] before one is recorded (or before 0009)."""
    if not (conn.execute(_SQL["has_models"]).fetchone() or (False,))[0]:
        return []
    return [CatalogModel(*row) for row in conn.execute(_SQL["models"])]


def find_model(conn: psycopg.Connection, model: ActiveModel, *, to_drop: bool = False) -> CatalogModel:
    """The catalog's model with this spec and catalog views; ConfigError naming those there are
    and what to do (``to_drop``: there is nothing to drop, rather than a model to add first)."""
    models = list_models(conn)
    for known in models:
        if (known.spec, known.catalog_views) == (model.spec, model.catalog_views):
            return known
    names = "; ".join(str(known) for known in models) or "none"
    other_views = [known.catalog_views for known in models if known.spec == model.spec]
    advice = (f"did you mean --views {other_views[0]}?" if other_views else
              "nothing to drop; `prodvec model` lists the catalog's models" if to_drop else
              f"add it with `prodvec model add {model.argument}`")
    raise ConfigError(f"the catalog has no model {model.spec} with {model.catalog_views} catalog views "
                      f"(its models: {names}): {advice}")


def load_active_encoder(conn: psycopg.Connection, settings: Settings) -> Encoder:
    """The encoder of ``settings.model`` on ``settings.device``, ``settings`` being as
    catalog_settings gave them: how commands and searches load the catalog's active model.

    The loader's WeightsUnavailable advises setting PRODVEC_MODEL, which fits a catalog that
    records no model yet only; a recorded one is the catalog's, and another PRODVEC_MODEL would
    be refused (ModelMismatch): then it says to roll back or bring the weights to this machine."""
    from prodvec.encode import load_encoder

    try:
        return load_encoder(settings.model, settings.device)
    except WeightsUnavailable as exc:
        if read_active_model(conn) is None:
            raise
        raise WeightsUnavailable(active_model_unloadable(settings.model, exc.reason, list_models(conn)),
                                 reason=exc.reason) from exc


def active_model_unloadable(spec: str, reason: str, models: list[CatalogModel]) -> str:
    """What to do when this machine cannot load the catalog's active model ``spec`` (``reason``:
    why, without the loader's setup advice); ``models``: the catalog's, for a rollback target."""
    rollback = "roll back with `prodvec model rollback`, or " if rollback_target(models) else ""
    return (f"this machine cannot load the catalog's active model {spec} ({reason}): {rollback}give this machine "
            "the model's weights")


def coverage(conn: psycopg.Connection, model: CatalogModel) -> Coverage:
    statement = sql.SQL(_SQL["progress"]).format(embedding=sql.Identifier(model.column("embedding")))
    row = conn.execute(statement, {"model_id": model.id}).fetchone()
    embedded, pending, failed, behind = row if row else (0, 0, 0, 0)
    return Coverage(int(embedded), int(pending), int(failed), int(behind))


def add_model(url: str, model: ActiveModel) -> tuple[CatalogModel, int, bool]:
    """Add ``model`` beside the active one: its columns (a short switch), its indexes (built
    concurrently, no write waits), then every product with an image queued for it. Returns the
    model, how many products were queued and whether it is new. Adding a model added before
    completes what is missing (indexes, products without its vector) and queues nothing twice."""
    from prodvec.db.connection import connect

    with connect(url, autocommit=True) as conn:
        known = {(known.spec, known.catalog_views) for known in list_models(conn)}
        [(model_id,)] = _switch(conn, "add", {"spec": model.spec, "dimensions": model.dimensions,
                                              "catalog_views": model.catalog_views}, doing=f"addition of {model}")
        for (statement,) in conn.execute(_SQL["index_statements"], {"model_id": model_id}).fetchall():
            log.debug("%s", statement)
            conn.execute(statement)
        queued = int((conn.execute(_SQL["queue_backfill"], {"model_id": model_id}).fetchone() or (0,))[0] or 0)
        added = next(known for known in list_models(conn) if known.id == model_id)
    return added, queued, (model.spec, model.catalog_views) not in known


def activate_model(conn: psycopg.Connection, model: CatalogModel, *, force: bool = False) -> tuple[list[str], float]:
    """Make ``model`` the active one; refused while it lacks products, unless ``force``.
    Returns what was done and the seconds the switch held the table."""
    if model.active:
        return [f"{model} is the active model already"], 0.0
    if not force:
        behind = coverage(conn, model).behind
        if behind:
            raise SchemaMismatch(
                f"{model} lacks vectors for {behind} product(s) the active model covers, so searches would miss "
                "them: let `prodvec worker` finish (`prodvec model` shows its progress), or activate anyway with "
                "--force"
            )
    started = time.perf_counter()
    steps = [step for (step,) in _switch(conn, "activate", {"model_id": model.id}, doing=f"activation of {model}")]
    return steps, time.perf_counter() - started


def rollback_target(models: list[CatalogModel]) -> CatalogModel | None:
    """Of the catalog's models, the one active before the current one (the latest deactivated)."""
    kept = [model for model in models if model.deactivated_at is not None and not model.active]
    return max(kept, key=lambda model: model.deactivated_at or model.added_at) if kept else None


def previous_model(conn: psycopg.Connection) -> CatalogModel:
    """rollback_target of the catalog's models; ConfigError when none is kept."""
    previous = rollback_target(list_models(conn))
    if previous is None:
        raise ConfigError("no previous model is kept to roll back to: `prodvec model` lists the catalog's models")
    return previous


def drop_model(conn: psycopg.Connection, model: CatalogModel) -> None:
    """Drop an inactive model: its columns, indexes, recall settings and jobs."""
    _switch(conn, "drop", {"model_id": model.id}, doing=f"drop of {model}")


def _switch(conn: psycopg.Connection, name: str, params: dict[str, object], *, doing: str) -> list[tuple[Any, ...]]:
    """Run one of model.sql's short switches (add / activate / drop) in its own transaction with
    a short lock_timeout, again while the table stays busy (``doing``: what it is, for messages). Its rows."""
    for attempt in range(1, SWITCH_TRIES + 1):
        try:
            with conn.transaction(), raised_as_schema_mismatch():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{SWITCH_LOCK_TIMEOUT_MS}ms",))
                return conn.execute(_SQL[name], params).fetchall()
        except psycopg.errors.LockNotAvailable:
            if attempt < SWITCH_TRIES:
                log.info("products is busy (try %d of %d): trying the %s again", attempt, SWITCH_TRIES, doing)
            time.sleep(min(0.1 * attempt, 1.0))
    raise SchemaMismatch(
        f"products stayed busy for {SWITCH_TRIES} tries of {SWITCH_LOCK_TIMEOUT_MS} ms, so the {doing} did not "
        "happen: a long import or an idle open transaction holds it (see pg_stat_activity); try again when it ends"
    )
