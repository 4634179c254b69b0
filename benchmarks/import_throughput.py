"""Catalog import throughput on a fresh embedded PostgreSQL: first import, unchanged re-import,
re-import with 10% of prices changed.

    python benchmarks/import_throughput.py --rows 200000

Generates a CSV (images are URLs and relative paths; import never opens them), migrates a new
database in a temporary directory, imports three times and stops the server. Prints rows/s and
what each import wrote and queued; the unchanged re-import must update and queue nothing.
"""
from __future__ import annotations

import argparse
import csv
import random
import tempfile
from datetime import datetime
from pathlib import Path

import psycopg

from prodvec.catalog import ImportReport, import_catalog
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade

CATEGORIES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
DIMENSIONS = 512


def write_catalog(path: Path, rows: int, *, seed: int, changed_prices: float = 0.0) -> None:
    """``rows`` products; with ``changed_prices`` that fraction of them gets another price."""
    rng = random.Random(seed)
    change = random.Random(seed + 1)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["sku", "title", "category", "price", "stock", "image"])
        for i in range(rows):
            category = CATEGORIES[i % len(CATEGORIES)]
            cents = rng.randrange(199, 49_999)
            if change.random() < changed_prices:
                cents += 100
            image = f"https://cdn.example.com/p/{i:08d}.jpg" if i % 2 else f"images/{i:08d}.jpg"
            writer.writerow([f"SKU-{i:08d}", f"Product {i} {category}", category,
                             f"{cents // 100}.{cents % 100:02d}", rng.randrange(0, 500), image])


def queued_since(conn: psycopg.Connection, since: datetime) -> int:
    """Jobs (re)queued after ``since``: new products, and new images of known ones."""
    row = conn.execute("SELECT count(*) FROM embedding_jobs WHERE enqueued_at >= %s", (since,)).fetchone()
    return int(row[0]) if row else 0


def run(rows: int, workdir: Path) -> None:
    catalog, changed = workdir / "catalog.csv", workdir / "catalog_changed.csv"
    write_catalog(catalog, rows, seed=7)
    write_catalog(changed, rows, seed=7, changed_prices=0.10)
    pgdata = workdir / "pgdata"
    server_url = ensure_server(pgdata)
    try:
        ensure_database(server_url, "bench")
        url = with_dbname(server_url, "bench")
        upgrade(url, DIMENSIONS)
        with connect(url, autocommit=True) as conn:
            print(f"{rows:,} rows, {catalog.stat().st_size / 2**20:.1f} MiB CSV")
            print(f"{'import':<22}{'rows/s':>10}{'seconds':>9}{'inserted':>10}{'updated':>9}"
                  f"{'unchanged':>10}{'bad':>5}{'queued':>8}")
            for label, path in (("first", catalog), ("unchanged re-import", catalog),
                                ("10% prices changed", changed)):
                row = conn.execute("SELECT clock_timestamp()").fetchone()
                assert row is not None
                report = import_catalog(conn, path, progress=False)
                print_row(label, report, queued_since(conn, row[0]))
    finally:
        stop_server(pgdata)


def print_row(label: str, report: ImportReport, queued: int) -> None:
    total = report.inserted + report.updated + report.unchanged + len(report.bad_rows)
    print(f"{label:<22}{total / report.seconds:>10,.0f}{report.seconds:>9.2f}{report.inserted:>10,}"
          f"{report.updated:>9,}{report.unchanged:>10,}{len(report.bad_rows):>5}{queued:>8,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="catalog rows (default 200000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prodvec-import-bench-") as workdir:
        run(args.rows, Path(workdir))


if __name__ == "__main__":
    main()
