"""Settings read from the environment, in one place.

DATABASE_URL      use this PostgreSQL (>= 15 with pgvector >= 0.8); unset: the embedded server
PRODVEC_HOME      where the embedded server keeps its data (default: per-user data dir)
PRODVEC_MODEL     encoder spec, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k or timm:efficientnet_lite0: the
                  first model of a new catalog; afterwards the database's active model (`prodvec model`)
                  is used, and a PRODVEC_MODEL that names another is refused
PRODVEC_DEVICE    torch device (default: cuda when available, else cpu)
PRODVEC_ROBUST_QUERIES  1/0: search query photos as several views too (default 1,
                  benchmarks/quality.md: it finds rotated and noisy photos, clean ones lose nothing)
PRODVEC_CATALOG_VIEWS   single/multi: vectors stored per product (default single: the photo;
                  multi: the whole photo fitted in the encoder's crop and a coarse thumbnail, which
                  finds noisy, tiny and off-centre photos better, benchmarks/quality.md). Recorded with
                  the active model like PRODVEC_MODEL: set it for a new catalog, unset afterwards
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from prodvec.errors import ConfigError
from prodvec.images.views import MULTI_VIEW, SINGLE_VIEW, ViewPolicy

DEFAULT_MODEL = "open_clip:ViT-B-32:laion2b_s34b_b79k"
OFFLINE_MODEL = "timm:efficientnet_lite0"
ROBUST_QUERIES_DEFAULT = True
CatalogViews = Literal["single", "multi"]
CATALOG_VIEWS_DEFAULT: CatalogViews = "single"
MAX_REPLICA_LAG_DEFAULT = 5.0


def default_home() -> Path:
    """Per-user data dir: $XDG_DATA_HOME/prodvec, else ~/.local/share/prodvec."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "prodvec"


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    home: Path
    model: str
    device: str | None
    robust_queries: bool
    catalog_views: CatalogViews
    #: Whether PRODVEC_MODEL / PRODVEC_CATALOG_VIEWS were set (False: ``model`` / ``catalog_views``
    #: are the defaults, which the database's active model overrides: prodvec.db.active_model).
    model_set: bool = False
    catalog_views_set: bool = False
    read_urls: tuple[str, ...] = ()
    max_replica_lag: float = MAX_REPLICA_LAG_DEFAULT

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def catalog_policy(self) -> ViewPolicy:
        """The view policy of PRODVEC_CATALOG_VIEWS: what the worker stores, how image queries search it."""
        return catalog_policy(self.catalog_views)


def catalog_policy(catalog_views: CatalogViews) -> ViewPolicy:
    """The view policy of a catalog's views: what the worker stores, how image queries search it."""
    return MULTI_VIEW if catalog_views == "multi" else SINGLE_VIEW


def load_settings() -> Settings:
    """Read the settings now (not at import), so tests and the CLI can change the environment."""
    home = os.environ.get("PRODVEC_HOME")
    return Settings(
        database_url=os.environ.get("DATABASE_URL") or None,
        home=Path(home).expanduser() if home else default_home(),
        model=os.environ.get("PRODVEC_MODEL") or DEFAULT_MODEL,
        device=os.environ.get("PRODVEC_DEVICE") or None,
        robust_queries=env_flag(os.environ, "PRODVEC_ROBUST_QUERIES", ROBUST_QUERIES_DEFAULT),
        catalog_views=_catalog_views(),
        model_set=bool(os.environ.get("PRODVEC_MODEL")),
        catalog_views_set=bool(os.environ.get("PRODVEC_CATALOG_VIEWS", "").strip()),
        read_urls=env_list(os.environ, "PRODVEC_READ_URLS"),
        max_replica_lag=_seconds("PRODVEC_MAX_REPLICA_LAG", MAX_REPLICA_LAG_DEFAULT),
    )


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (0 <= seconds < float("inf")):
        raise ConfigError(f"{name}={value!r}: use a number of seconds, e.g. 5")
    return seconds


def _catalog_views() -> CatalogViews:
    value = os.environ.get("PRODVEC_CATALOG_VIEWS", "").strip().lower() or CATALOG_VIEWS_DEFAULT
    if value not in get_args(CatalogViews):
        raise ConfigError(
            f"PRODVEC_CATALOG_VIEWS={value!r}: use single (one vector per product: the photo) or multi "
            "(two: the whole photo and a coarse thumbnail; see benchmarks/quality.md)"
        )
    return value  # type: ignore[return-value]  # one of CatalogViews, checked above


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated setting's items, blanks dropped (PRODVEC_READ_URLS, the service's keys)."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A 1/0 (true/false, yes/no, on/off) setting; ConfigError for anything else."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use 1 or 0")
