"""The catalog's active model: the encoder spec, dimensions and catalog views its vectors are
made with, recorded in the database (migrations/0007_active_model.sql).

Every process takes its model from there. PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS choose the
first model of a new catalog (recorded at `prodvec migrate` or the first `prodvec worker`);
afterwards a process whose settings name another model is refused (ModelMismatch) instead of
comparing its query vectors with the catalog's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import psycopg

from prodvec.config import CatalogViews, Settings, catalog_policy
from prodvec.db.migrate import raised_as_schema_mismatch
from prodvec.errors import ModelMismatch
from prodvec.images.views import embedding_model
from prodvec.sql import queries

if TYPE_CHECKING:
    from sqlalchemy.orm import Session



@dataclass(frozen=True)
class ActiveModel:
    spec: str  # normalised encoder spec (prodvec.encode.EncoderSpec.spec)
    dimensions: int
    catalog_views: CatalogViews

    @property
    def embedding_model(self) -> str:
        """What products.embedding_model says of this model's vectors."""
        return embedding_model(self.spec, catalog_policy(self.catalog_views))

    @property
    def argument(self) -> str:
        """The model as `prodvec model add/activate/drop` take it (views only when not the default)."""
        return f"{self.spec}{' --views multi' if self.catalog_views == 'multi' else ''}"

    def __str__(self) -> str:
        return f"{self.spec} ({self.dimensions}-d, {self.catalog_views} catalog views)"


def read_active_model(conn: psycopg.Connection) -> ActiveModel | None:
    """The recorded model; None for a catalog that has none yet (or a schema before 0007)."""
    sql = queries("model.sql")
    if not (conn.execute(sql["has_record"]).fetchone() or (False,))[0]:
        return None
    row = conn.execute(sql["read"]).fetchone()
    return ActiveModel(*row) if row else None


def record_active_model(conn: psycopg.Connection, model: ActiveModel, *, drop_embeddings: bool = False) -> bool:
    """Record ``model`` as the active one, sizing the vector columns for it; True when the record changed.

    A catalog's first model is recorded as given. Another replaces it only with
    ``drop_embeddings`` (every vector dropped, every product queued); otherwise, as when the
    columns hold vectors of other dimensions, SchemaMismatch saying what to do.
    """
    params = {"spec": model.spec, "dimensions": model.dimensions, "catalog_views": model.catalog_views,
              "drop_embeddings": drop_embeddings}
    with raised_as_schema_mismatch():
        return bool((conn.execute(queries("model.sql")["record"], params).fetchone() or (False,))[0])


def settings_model(settings: Settings) -> ActiveModel:
    """The model the settings choose for a new catalog: PRODVEC_MODEL (or the default) and
    PRODVEC_CATALOG_VIEWS (or single). ConfigError for a malformed spec."""
    from prodvec.encode.spec import parse_spec, spec_dimensions

    spec = parse_spec(settings.model).spec
    return ActiveModel(spec, spec_dimensions(spec), settings.catalog_views)


def choose_model(recorded: ActiveModel | None, settings: Settings, *, change: bool = False) -> ActiveModel:
    """The model a process works with: the recorded one, or the settings' for a new catalog.

    Settings that were set and name another model (or other catalog views) are that model when
    ``change`` (`prodvec migrate --reset-embeddings`, which drops every vector), else ModelMismatch
    saying how to change models without stopping search.
    """
    if recorded is None:
        return settings_model(settings)
    chosen = recorded
    if settings.model_set and settings.model != recorded.spec:
        asked = settings_model(settings)  # normalised: another spelling of the same model agrees
        if asked.spec != recorded.spec:
            chosen = dataclasses.replace(chosen, spec=asked.spec, dimensions=asked.dimensions)
    if settings.catalog_views_set and settings.catalog_views != recorded.catalog_views:
        chosen = dataclasses.replace(chosen, catalog_views=settings.catalog_views)
    if chosen != recorded and not change:
        raise ModelMismatch(_mismatch(recorded, chosen))
    return chosen


def catalog_settings(conn: psycopg.Connection, settings: Settings, *, record: bool = False) -> Settings:
    """``settings`` with the catalog's model and views (choose_model; ModelMismatch when they
    disagree). ``record``: a catalog without a model records the settings' (its first embed)."""
    recorded = read_active_model(conn)
    try:
        model = choose_model(recorded, settings)
    except ModelMismatch as exc:
        asked = choose_model(recorded, settings, change=True)
        kept = conn.execute(queries("model.sql")["is_kept"], {"spec": asked.spec, "catalog_views": asked.catalog_views})
        if kept.fetchone() is None:
            raise
        raise ModelMismatch(str(exc).split(", or change models")[0] + ", or make it the active model again: "
                            f"`prodvec model activate {asked.argument}` (it is kept, with its vectors)") from None
    if recorded is None and record:
        record_active_model(conn, model)
    return dataclasses.replace(settings, model=model.spec, catalog_views=model.catalog_views)


def session_connection(session: Session) -> psycopg.Connection:
    """The psycopg connection under a SQLAlchemy session (its current transaction)."""
    return cast(psycopg.Connection, session.connection().connection.driver_connection)


def _mismatch(recorded: ActiveModel, asked: ActiveModel) -> str:
    settings = []
    if asked.spec != recorded.spec:
        settings.append(("PRODVEC_MODEL", asked.spec))
    if asked.catalog_views != recorded.catalog_views:
        settings.append(("PRODVEC_CATALOG_VIEWS", asked.catalog_views))
    given = " and ".join(f"{name}={value}" for name, value in settings)
    unset = " and ".join(name for name, _ in settings)
    return (f"{given} disagrees with this catalog's active model, {recorded}: unset {unset} to use the "
            f"active model, or {change_models(asked)}")


def change_models(model: ActiveModel) -> str:
    """How to make ``model`` the active one without stopping search."""
    named = model.argument
    return (f"change models without stopping search: `prodvec model add {named}`, `prodvec worker`, then "
            f"`prodvec model activate {named}`")
