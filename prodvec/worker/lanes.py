"""Which models a worker embeds for: one lane per model of the catalog it can load, the active
model's first (its jobs are claimed before any other model's), then those added beside it.

A model whose weights this machine cannot load is skipped, and said so once: its jobs wait for
a worker that can. Lanes follow the catalog: a model added, activated or dropped while the worker
runs is picked up at its next refresh (each time it runs out of work, and every few seconds).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from prodvec.config import catalog_policy
from prodvec.db.active_model import ActiveModel, record_active_model
from prodvec.db.migrate import embedding_dimensions
from prodvec.db.model_registry import CatalogModel, active_model_unloadable, list_models
from prodvec.encode import Encoder
from prodvec.errors import ModelMismatch, ProdvecError, SchemaMismatch, WeightsUnavailable
from prodvec.images.views import SINGLE_VIEW, ViewPolicy
from prodvec.worker.prepare import Preparer

log = logging.getLogger("prodvec.worker")

#: A loader of encoders by spec (prodvec.encode.load_encoder on the worker's device).
EncoderLoader = Callable[[str], Encoder]


@dataclass
class Lane:
    model: CatalogModel
    encoder: Encoder
    policy: ViewPolicy
    preparer: Preparer


class Lanes:
    """The worker's lanes. ``encoder`` (under ``policy``) is the model the worker was started
    with: the catalog's active model (recorded as such in a catalog that has none yet), or
    another of its models. Other models are loaded with ``loader``; without one, only the given
    model is embedded."""

    REFRESH_SECONDS = 5.0

    def __init__(
        self,
        encoder: Encoder,
        policy: ViewPolicy = SINGLE_VIEW,
        *,
        loader: EncoderLoader | None = None,
        preparer: Callable[[Encoder, ViewPolicy], Preparer],
    ) -> None:
        self._given = ActiveModel(encoder.spec, encoder.dimensions,
                                  "single" if policy.catalog_is_plain_photo else "multi")
        self._encoders: dict[str, Encoder] = {encoder.spec: encoder}
        self._loader = loader
        self._make_preparer = preparer
        self._lanes: dict[int, Lane] = {}
        self._retired: list[Lane] = []  # dropped models' lanes: batches in flight may still use them
        self._skipped: set[int] = set()
        self._refreshed_at = float("-inf")

    @property
    def ordered(self) -> list[Lane]:
        """The active model's lane first."""
        return sorted(self._lanes.values(), key=lambda lane: (not lane.model.active, lane.model.id))

    @property
    def model_ids(self) -> list[int]:
        return list(self._lanes)

    def refresh(self, conn: psycopg.Connection, *, force: bool = False) -> None:
        """Follow the catalog's models (at most every REFRESH_SECONDS unless ``force``)."""
        if not force and time.monotonic() - self._refreshed_at < self.REFRESH_SECONDS:
            return
        models = list_models(conn)
        if not models:  # a new catalog: its first embed records the worker's model
            record_active_model(conn, self._given)
            models = list_models(conn)
        # The given model must be one of the catalog's (the active one when the worker started;
        # an activation since, e.g. while the worker reconnected, makes it another of them).
        if all((model.spec, model.catalog_views) != (self._given.spec, self._given.catalog_views) for model in models):
            raise ModelMismatch(
                f"this worker encodes with {self._given} but the catalog's active model is {models[0]}: "
                "start the worker without PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS to use the active model"
            )
        for model in models:
            lane = self._lanes.get(model.id)
            if lane is not None:
                lane.model = model  # activation changes which one is active
            elif model.id not in self._skipped:
                self._open(conn, model)
        for model_id in set(self._lanes) - {model.id for model in models}:
            self._retired.append(self._lanes.pop(model_id))
        self._refreshed_at = time.monotonic()

    def close(self) -> None:
        for lane in [*self._lanes.values(), *self._retired]:
            lane.preparer.close()
        self._lanes.clear()
        self._retired.clear()

    def _open(self, conn: psycopg.Connection, model: CatalogModel) -> None:
        encoder = self._encoder(conn, model)
        if encoder is None:
            return
        column = model.column("embedding")
        if (dimensions := embedding_dimensions(conn, column)) != encoder.dimensions:
            raise SchemaMismatch(
                f"products.{column} holds {dimensions}-d vectors but {model.spec} makes {encoder.dimensions}-d "
                "ones: run `prodvec migrate` (a column changed by hand), or drop the model and add it again"
            )
        policy = catalog_policy(model.catalog_views)
        self._lanes[model.id] = Lane(model, encoder, policy, self._make_preparer(encoder, policy))
        log.info("embedding for %s%s", model, " (active)" if model.active else " (added beside the active model)")

    def _encoder(self, conn: psycopg.Connection, model: CatalogModel) -> Encoder | None:
        encoder = self._encoders.get(model.spec)
        if encoder is not None:
            return encoder
        if self._loader is None:
            why = "this worker was given one encoder"
        else:
            try:
                encoder = self._encoders[model.spec] = self._loader(model.spec)
                return encoder
            except ProdvecError as exc:  # no weights here, a bad checkpoint path: other workers may have them
                why = exc.reason if isinstance(exc, WeightsUnavailable) else str(exc)  # not PRODVEC_MODEL advice
        if model.active and self._loader is not None:  # a worker meant to keep the catalog current cannot
            raise ModelMismatch(active_model_unloadable(model.spec, why, list_models(conn)))
        self._skipped.add(model.id)
        log.warning("skipping %s's jobs: this worker cannot load it; a worker where its weights are embeds them "
                    "(or `prodvec model drop %s`). Loading it said: %s", model, model.spec, why)
        return None
