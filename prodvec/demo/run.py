"""`prodvec demo`: the whole tour on the embedded database, with no network.

A fresh `prodvec_demo` database on the embedded server (your own data is never touched; one
left by an earlier demo, where you may have worked since, is replaced only when asked: --reset),
the sample catalog of 300 Fashion-MNIST product photos (see catalog/ATTRIBUTION.md),
embedding with the configured model or, when its weights cannot be had, the offline
encoder, then three filtered searches printed as tables.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg

from prodvec.catalog import import_catalog
from prodvec.cli.output import print_table
from prodvec.cli.search import hit_rows
from prodvec.config import OFFLINE_MODEL, Settings, load_settings
from prodvec.db.active_model import ActiveModel, record_active_model
from prodvec.db.connection import connect, database_url, with_dbname
from prodvec.db.migrate import upgrade_schema
from prodvec.encode import Encoder, load_encoder
from prodvec.errors import ConfigError, WeightsUnavailable
from prodvec.search.result import SearchResult
from prodvec.worker.pipeline import Worker

CATALOG_DIR = Path(__file__).parent / "catalog"
DEMO_DATABASE = "prodvec_demo"


def run_demo(*, reset: bool = False) -> int:
    """The tour; ``reset``: replace the demo database an earlier demo left (ConfigError otherwise)."""
    started = time.perf_counter()
    settings = dataclasses.replace(load_settings(), database_url=None)  # always the embedded server
    url = fresh_database(database_url(settings), reset=reset)
    print(f"database: embedded PostgreSQL, {url}")

    encoder = _demo_encoder(settings.model, settings.device)
    upgrade_schema(url)
    with connect(url) as conn:
        # The encoder it took (maybe the offline fallback) is the demo catalog's active model.
        record_active_model(conn, ActiveModel(encoder.spec, encoder.dimensions, settings.catalog_views))
        report = import_catalog(conn, CATALOG_DIR / "catalog.csv", progress=False)
    print(f"imported {report.inserted} products from {CATALOG_DIR / 'catalog.csv'}")

    stats = Worker(url, encoder, policy=settings.catalog_policy).run(once=True)
    print(f"embedded: {stats.summary()}")
    # Query photos go through the encoder that made the catalog's vectors, which may be the
    # offline fallback rather than PRODVEC_MODEL's.
    _searches(url, encoder, settings)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    # Its own database, so the user's default one stays as it was: the other commands reach it
    # only through DATABASE_URL.
    print(f"the demo's catalog is in a database of its own, {DEMO_DATABASE}; to point the other commands at it:")
    print(f"  export DATABASE_URL={shlex.quote(url)}")
    print("  prodvec status; prodvec search --sku FM-00003; prodvec serve   (the page: http://127.0.0.1:8000/)")
    print("  (unset DATABASE_URL to go back to your own database)")
    print(f"the embedded PostgreSQL keeps running (data in {settings.pgdata}): "
          "`prodvec db stop` stops it", file=sys.stderr)
    return 0


def fresh_database(server_url: str, *, reset: bool) -> str:
    """The URL of a new, empty demo database on the server at ``server_url``. The README invites
    working in the demo's database, so one already there is dropped only with ``reset``."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)).fetchone():
            if not reset:
                raise ConfigError(
                    f"the database {DEMO_DATABASE} of an earlier demo is there, with what you imported or changed "
                    f"in it since: `prodvec demo --reset` drops it and runs the demo again"
                )
            print(f"dropping the earlier demo's database {DEMO_DATABASE} (--reset)")
            admin.execute(f'DROP DATABASE "{DEMO_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    return with_dbname(server_url, DEMO_DATABASE)


def _demo_encoder(model: str, device: str | None) -> Encoder:
    try:
        encoder = load_encoder(model, device)
    except WeightsUnavailable as exc:
        print(f"encoder: {model} unavailable ({str(exc).splitlines()[0]})")
        print(f"encoder: falling back to the offline encoder {OFFLINE_MODEL} (real ImageNet weights)")
        encoder = load_encoder(OFFLINE_MODEL, device)
    print(f"encoder: {encoder.spec}, {encoder.dimensions}-d, on {encoder.device}")
    return encoder


def _searches(url: str, encoder: Encoder, settings: Settings) -> None:
    from prodvec import session
    from prodvec.models import Product
    from prodvec.search import Sku

    queries = CATALOG_DIR / "queries"
    policy, robust = settings.catalog_policy, settings.robust_queries
    with session(url) as db:
        searches = [
            (
                f"photo {queries / 'sneaker.png'}: sneakers under 80, in stock",
                Product.similar_to(
                    queries / "sneaker.png", session=db, k=5, encoder=encoder, policy=policy, robust=robust,
                    where=[Product.category == "sneaker", Product.price < Decimal("80"), Product.stock > 0],
                ),
            ),
            (
                f"photo {queries / 'bag.png'}: anything under 50",
                Product.similar_to(queries / "bag.png", session=db, k=5, encoder=encoder, policy=policy, robust=robust,
                                   where=[Product.price < Decimal("50")]),
            ),
            (
                "more like sku FM-00003, in stock",
                Product.similar_to(Sku("FM-00003"), session=db, k=5, where=[Product.stock > 0]),
            ),
        ]
        if encoder.supports_text:
            text = Product.similar_to_text("a leather handbag", session=db, k=5, encoder=encoder, policy=policy)
            searches.append(("text 'a leather handbag'", text))
        for title, result in searches:
            print(f"\n== {title} ({_how_found(result)})")
            print_table(hit_rows(result), ["sku", "title", "category", "price", "stock", "distance"])


def _how_found(result: SearchResult) -> str:
    if not result.exact:
        return "approximate: the nearest the HNSW index found"
    short = ", as the HNSW index came back short" if result.strategy == "hnsw+exact" else ""
    return f"exact: every matching product compared{short}"
