"""Settings read from the environment, in one place.

DATABASE_URL      use this PostgreSQL (>= 15 with pgvector >= 0.8); unset: the embedded server
PRODVEC_HOME      where the embedded server keeps its data (default: per-user data dir)
PRODVEC_MODEL     encoder spec, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k or timm:efficientnet_lite0
PRODVEC_DEVICE    torch device (default: cuda when available, else cpu)
PRODVEC_ROBUST_QUERIES  1/0: search query photos as several views too (default 1,
                  benchmarks/quality.md: it finds rotated and noisy photos, clean ones lose nothing)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prodvec.errors import ConfigError

DEFAULT_MODEL = "open_clip:ViT-B-32:laion2b_s34b_b79k"
OFFLINE_MODEL = "timm:efficientnet_lite0"
ROBUST_QUERIES_DEFAULT = True


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

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"


def load_settings() -> Settings:
    """Read the settings now (not at import), so tests and the CLI can change the environment."""
    home = os.environ.get("PRODVEC_HOME")
    return Settings(
        database_url=os.environ.get("DATABASE_URL") or None,
        home=Path(home).expanduser() if home else default_home(),
        model=os.environ.get("PRODVEC_MODEL") or DEFAULT_MODEL,
        device=os.environ.get("PRODVEC_DEVICE") or None,
        robust_queries=_flag("PRODVEC_ROBUST_QUERIES", ROBUST_QUERIES_DEFAULT),
    )


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use 1 or 0")
