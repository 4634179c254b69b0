"""The encoders a server keeps loaded: the active model's and, ahead of need, every other model
the catalog lists (one added for an upgrade, the previous one a rollback returns to).

Loading a model takes seconds; a search that finds the catalog switched to a model not loaded
would wait that long, and every search behind it. So a thread looks at the catalog's models
every few seconds and loads those missing (PRODVEC_PRELOAD_MODELS=0: only when a model becomes
active, one encoder in memory). A model this machine cannot load is said once in the log and in
/v1/status, before anyone activates it. A model dropped from the catalog is let go.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.exc import DBAPIError

from prodvec.errors import ProdvecError

if TYPE_CHECKING:
    from prodvec.encode import Encoder

log = logging.getLogger("prodvec.service")

#: Seconds between looks at the catalog's models: `prodvec model add` is followed by a backfill
#: of minutes at least, so a model is loaded long before it can be activated.
CHECK_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class ModelLoad:
    spec: str
    loaded: bool
    problem: str | None  # why this server cannot load it


class Encoders:
    """Loaded encoders by model spec, on one device."""

    def __init__(self, current: Encoder, *, preload: bool, check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.device = str(current.device)
        self.preload = preload
        self.check_interval = check_interval
        self._loaded: dict[str, Encoder] = {current.spec: current}
        self._problems: dict[str, str] = {}
        self._listed: list[str] = [current.spec]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, spec: str) -> Encoder:
        """``spec``'s encoder: the one loaded, else loaded now (ProdvecError where it cannot be)."""
        from prodvec.encode import load_encoder

        with self._lock:
            found = self._loaded.get(spec)
        if found is not None:
            return found
        log.info("loading %s (not loaded ahead)", spec)
        encoder = load_encoder(spec, self.device)
        with self._lock:
            return self._loaded.setdefault(spec, encoder)

    def refresh(self, listed: list[str], in_use: str) -> None:
        """Load the models the catalog ``listed`` that are not loaded yet; let go of those it no
        longer lists, except ``in_use`` (the model searches encode with now)."""
        from prodvec.encode import load_encoder

        keep = set(listed) if self.preload else set()
        with self._lock:
            self._listed = listed
            for spec in [spec for spec in self._loaded if spec not in keep and spec != in_use]:
                log.info("unloading %s: %s", spec, "the catalog no longer lists it" if self.preload else "not in use")
                del self._loaded[spec]
            missing = [spec for spec in listed if spec not in self._loaded and spec not in self._problems]
        for spec in missing if self.preload else []:
            try:
                encoder = load_encoder(spec, self.device)
            except ProdvecError as exc:
                log.warning("cannot load %s on this server, so searches here would fail once it is "
                            "activated: %s", spec, exc)
                with self._lock:
                    self._problems[spec] = str(exc)
                continue
            log.info("loaded %s ahead of its activation", spec)
            with self._lock:
                self._loaded.setdefault(spec, encoder)

    def states(self) -> list[ModelLoad]:
        """Each model the catalog listed at the last look, and the one in use if it is not listed."""
        with self._lock:
            specs = self._listed + [spec for spec in self._loaded if spec not in self._listed]
            return [ModelLoad(spec, spec in self._loaded, self._problems.get(spec)) for spec in specs]

    def start(self, catalog_specs: Callable[[], list[str]], in_use: Callable[[], str]) -> None:
        """Look every check_interval: ``catalog_specs`` reads the specs the catalog lists (it may
        raise: the database is down, the schema not made yet), ``in_use`` names the model in use."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._look_every_interval,
                                        args=(catalog_specs, in_use, self._stopping),
                                        name="prodvec-model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; a load in flight is left to finish in its daemon thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._thread = None

    def _look_every_interval(self, catalog_specs: Callable[[], list[str]], in_use: Callable[[], str],
                             stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.refresh(catalog_specs(), in_use())
            except (psycopg.Error, DBAPIError) as exc:  # the database down, no schema yet: the next look
                log.debug("could not read the catalog's models: %s", exc)
            stopping.wait(self.check_interval)
