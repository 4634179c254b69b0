"""The encoders a server keeps loaded: the active model's and, ahead of need, every other model
the catalog lists (one added for an upgrade, the previous one a rollback returns to).

Loading a model takes seconds; a search that finds the catalog switched to a model not loaded
would wait that long, and every search behind it. So a thread looks at the catalog's models
every few seconds and loads those missing (PRODVEC_PRELOAD_MODELS=0: only when a model becomes
active, one encoder in memory). A model this machine cannot load is said in the log and in
/v1/status before anyone activates it, and tried again every few minutes. A model dropped from
the catalog is let go.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.exc import DBAPIError

from prodvec.errors import ProdvecError, WeightsUnavailable
from prodvec.service.errors import ModelUnavailable

if TYPE_CHECKING:
    from prodvec.encode import Encoder

log = logging.getLogger("prodvec.service")

#: Seconds between looks at the catalog's models: `prodvec model add` is followed by a backfill
#: of minutes at least, so a model is loaded long before it can be activated.
CHECK_INTERVAL_SECONDS = 10.0
#: A model that failed to load ahead is tried again after this long (its weights may have been
#: put on this server since); not at every look, each of which would log the failure again.
RETRY_AHEAD_SECONDS = 300.0


#: A model as the catalog lists it: its spec and its catalog views (single, multi). One encoder
#: serves a spec under either views.
CatalogEntry = tuple[str, str]


@dataclass(frozen=True)
class ModelLoad:
    spec: str
    catalog_views: str | None  # None: the model in use, no longer listed by the catalog
    loaded: bool
    problem: str | None  # why this server cannot load it


class Encoders:
    """Loaded encoders by model spec, on one device."""

    def __init__(self, current: Encoder, *, preload: bool, check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.device = str(current.device)
        self.preload = preload
        self.check_interval = check_interval
        self._loaded: dict[str, Encoder] = {current.spec: current}
        self._problems: dict[str, _Problem] = {}  # the last failed load of each model that has one
        self._listed: list[CatalogEntry] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, spec: str) -> Encoder:
        """``spec``'s encoder: the one loaded, else loaded now. ModelUnavailable where it cannot
        be; tried again at most every check_interval (a search each time would only wait)."""
        with self._lock:
            found = self._loaded.get(spec)
            failed = self._problems.get(spec)
        if found is not None:
            return found
        if failed is not None and time.monotonic() - failed.at < self.check_interval:
            raise _unavailable(spec, failed.reason)
        log.info("loading %s (not loaded ahead)", spec)
        loaded = self._load(spec)
        if isinstance(loaded, _Problem):
            log.warning("cannot load the catalog's active model %s on this server: %s", spec, loaded.reason)
            raise _unavailable(spec, loaded.reason)
        return loaded

    def refresh(self, listed: list[CatalogEntry], in_use: str) -> None:
        """Load the models the catalog ``listed`` that are not loaded yet; let go of those it no
        longer lists, except ``in_use`` (the model searches encode with now)."""
        specs = list(dict.fromkeys(spec for spec, _ in listed))
        keep = set(specs) if self.preload else set()
        with self._lock:
            self._listed = list(listed)
            for spec in [spec for spec in self._loaded if spec not in keep and spec != in_use]:
                log.info("unloading %s: %s", spec, "the catalog no longer lists it" if self.preload else "not in use")
                del self._loaded[spec]
            now = time.monotonic()
            missing = [spec for spec in specs if spec not in self._loaded
                       and (spec not in self._problems or now - self._problems[spec].at >= RETRY_AHEAD_SECONDS)]
        for spec in missing if self.preload else []:
            loaded = self._load(spec)
            if isinstance(loaded, _Problem):
                log.warning("cannot load %s on this server, so searches here would fail once it is "
                            "activated: %s", spec, loaded.reason)
            else:
                log.info("loaded %s ahead of its activation", spec)

    def _load(self, spec: str) -> Encoder | _Problem:
        """Load ``spec``'s encoder and hold it; where it cannot be, the problem, kept for states()
        and for when to try again."""
        from prodvec.encode import load_encoder

        try:
            encoder = load_encoder(spec, self.device)
        except ProdvecError as exc:
            problem = _Problem(_reason(exc), time.monotonic())
            with self._lock:
                self._problems[spec] = problem
            return problem
        with self._lock:
            self._problems.pop(spec, None)
            return self._loaded.setdefault(spec, encoder)

    def states(self) -> list[ModelLoad]:
        """Each model the catalog listed at the last look (before the first, none), and a loaded
        one it does not list (the model in use)."""
        with self._lock:
            listed_specs = {spec for spec, _ in self._listed}
            entries = self._listed + [(spec, None) for spec in self._loaded if spec not in listed_specs]
            return [ModelLoad(spec, views, spec in self._loaded, _problem_text(self._problems.get(spec)))
                    for spec, views in entries]

    def start(self, catalog_models: Callable[[], list[CatalogEntry]], in_use: Callable[[], str]) -> None:
        """Look every check_interval: ``catalog_models`` reads the models the catalog lists (it may
        raise: the database is down, the schema not made yet), ``in_use`` names the model in use."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._look_every_interval,
                                        args=(catalog_models, in_use, self._stopping),
                                        name="prodvec-model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; a load in flight is left to finish in its daemon thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._thread = None

    def _look_every_interval(self, catalog_models: Callable[[], list[CatalogEntry]], in_use: Callable[[], str],
                             stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.refresh(catalog_models(), in_use())
            except (psycopg.Error, DBAPIError, ProdvecError) as exc:  # the database down, no schema yet: the next look
                log.debug("could not read the catalog's models: %s", exc)
            stopping.wait(self.check_interval)


@dataclass(frozen=True)
class _Problem:
    reason: str
    at: float  # time.monotonic() of the failed load


def _reason(exc: ProdvecError) -> str:
    # A loader's own advice is for choosing PRODVEC_MODEL on a first setup; a catalog's model
    # is chosen already (WeightsUnavailable.reason leaves that advice out).
    return exc.reason if isinstance(exc, WeightsUnavailable) else str(exc)


def _problem_text(problem: _Problem | None) -> str | None:
    if problem is None:
        return None
    every = f"{RETRY_AHEAD_SECONDS / 60:g} min"
    return f"{problem.reason}: give this server the model's weights (it tries again every {every})"


def _unavailable(spec: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"this server cannot load the catalog's active model {spec} ({reason}): roll back with "
        f"`prodvec model rollback`, or give this server the model's weights (it tries again every "
        f"{CHECK_INTERVAL_SECONDS:g} s)"
    )
