"""Import a catalog file into products: binary COPY into a staging table, then a set-based upsert.

Rows go in chunks: each chunk is copied into a TEMP table and merged into products with one
``INSERT ... SELECT ... ON CONFLICT (sku) DO UPDATE`` that leaves out rows whose values did not
change. So a re-import of an unchanged catalog writes nothing (not even row locks), fires no
update trigger, queues nothing and keeps updated_at; the statement-level triggers queue new
products and changed images once per chunk, while price, stock, title and category changes
queue nothing. The whole file is one transaction: an import that fails half-way (database
down, disk full) leaves products as they were. Bad rows do not fail it: they are reported and
skipped, unless ``strict`` makes any bad row fail the whole import.

A sync (``sync="delete"`` or ``"deactivate"``, a shop's full feed) also removes the products
whose sku is not in the file, or keeps them with stock 0, in the same transaction. A bound on
the share of the catalog it may remove refuses a feed that was cut short, and then nothing is
written. A row too bad to import still keeps its product when its sku can be read.

A sku that appears more than once in a file: the last row wins, as importing the rows one
after the other would have it. Each earlier row is reported as a bad row naming the line that
replaces it, and skipped; if that last row is itself invalid the sku is left as it was.
Finding the last rows takes a quick first pass over the file (skus only) and about 100 bytes
of memory per distinct sku while it runs.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal, TextIO

import psycopg
from tqdm import tqdm

from prodvec.catalog.readers import CatalogFormat, detect_format, iter_records, open_catalog
from prodvec.catalog.rows import CatalogRow, clean_sku, parse_row
from prodvec.errors import CatalogError, CatalogRowError
from prodvec.sql import queries

#: Rows per COPY + upsert. Large enough that per-statement costs vanish, small enough that
#: the staging table and the triggers' transition tables stay in memory.
CHUNK_ROWS = 50_000

_SQL = queries("catalog.sql")
#: Binary COPY types, in CatalogRow's column order.
_COPY_TYPES = ("text", "text", "text", "numeric", "int4", "text")
#: A sync may remove at most this share of the products there were before it, unless told more.
MAX_REMOVE_SHARE = 0.2
#: Bad rows quoted in a --strict refusal; the rest are counted.
_QUOTED_BAD_ROWS = 3

#: What a sync does with products missing from the file: delete them, or keep them with stock 0.
SyncMode = Literal["delete", "deactivate"]


@dataclass
class ImportReport:
    """What one import did. ``unchanged``: rows already in products exactly as in the file.
    ``removed`` / ``deactivated``: products not in the file that a sync deleted / set to stock 0
    (those already at 0 are not counted)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    bad_rows: list[CatalogRowError] = field(default_factory=list)
    removed: int = 0
    deactivated: int = 0
    seconds: float = 0.0


def import_catalog(
    conn: psycopg.Connection,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    progress: bool | None = None,
    strict: bool = False,
    ignore_unknown_columns: bool = False,
    sync: SyncMode | None = None,
    max_remove_share: float = MAX_REMOVE_SHARE,
) -> ImportReport:
    """Insert or update the products in a CSV or JSON Lines catalog file; one transaction.

    ``format``: csv, jsonl or ndjson; by default the file suffix says. ``progress``: show a
    progress bar on stderr; by default only when stderr is a terminal. Relative image paths
    are stored resolved against the file's folder. ``strict``: any bad row fails the import.
    ``ignore_unknown_columns``: leave out columns (JSON keys) prodvec does not read instead of
    refusing the file. ``sync``: also remove the products not in the file (see the module),
    at most ``max_remove_share`` of those there were.

    Raises, writing nothing: `CatalogRowError` for a header without a required column or with
    an unknown one (line 1) or an unknown JSON key; `CatalogError` for a missing or empty file,
    bad rows under ``strict`` and a sync over its bound; `ConfigError` for an unknown format.
    """
    started = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CatalogError(f"catalog file {path} {what}")
    if not 0 <= max_remove_share <= 1:
        raise CatalogError(f"the share of products a sync may remove is between 0 and 1, not {max_remove_share}")
    fmt = detect_format(path, format)
    show = sys.stderr.isatty() if progress is None else progress
    report = ImportReport()
    superseded = _repeated_skus(path, fmt, show, ignore_unknown_columns)
    kept_skus: list[str] = []  # skus of bad rows: a sync keeps their products
    with conn.transaction(), open_catalog(path) as stream, _bar(path, "importing", show) as bar:
        conn.execute(_SQL["create_staging"])
        if sync:
            conn.execute(_SQL["create_sync_skus"])
        rows = _valid_rows(stream, fmt, superseded, report.bad_rows, kept_skus,
                           base_dir=str(path.parent.absolute()), ignore_unknown=ignore_unknown_columns)
        # closing(): the reading thread is done before the file closes, even on an error.
        with closing(_read_ahead(rows, stream)) as chunks:
            for chunk, position in chunks:
                inserted, updated = _write_chunk(conn, chunk, remember_skus=sync is not None)
                report.inserted += inserted
                report.updated += updated
                report.unchanged += len(chunk) - inserted - updated
                bar.update(position - bar.n)
        if not (report.inserted or report.updated or report.unchanged or report.bad_rows):
            raise CatalogError(
                f"catalog file {path} is empty" if path.stat().st_size == 0
                else f"catalog file {path} has no product rows: nothing to import"
            )
        if strict and report.bad_rows:
            raise CatalogError(_strict_refusal(report.bad_rows))
        if sync:
            _sync(conn, report, kept_skus, sync, max_remove_share)
        conn.execute(_SQL["drop_staging"])
    report.seconds = time.perf_counter() - started
    return report


def _strict_refusal(bad_rows: list[CatalogRowError]) -> str:
    quoted = "; ".join(str(error) for error in bad_rows[:_QUOTED_BAD_ROWS])
    more = len(bad_rows) - _QUOTED_BAD_ROWS
    rest = f"; and {more} more" if more > 0 else ""
    return f"{len(bad_rows)} bad row(s), so nothing was imported (strict): {quoted}{rest}"


def _sync(
    conn: psycopg.Connection, report: ImportReport, kept_skus: list[str], mode: SyncMode, max_share: float
) -> None:
    """Remove (or deactivate) the products whose sku the file does not hold; within the bound."""
    conn.execute(_SQL["remember_bad_skus"], {"skus": kept_skus})
    missing, total = conn.execute(_SQL["sync_missing"]).fetchone() or (0, 0)
    before = total - report.inserted  # the catalog as it was: the share is of that
    if missing and missing > max_share * before:
        raise CatalogError(
            f"the sync would {'delete' if mode == 'delete' else 'deactivate'} {missing} of the {before} products "
            f"({missing / before:.0%}) that are not in the file, more than the {max_share:.0%} allowed; "
            "nothing was imported. If the file is the whole catalog, allow it with "
            f"--max-remove-share {math.ceil(100 * missing / before) / 100:g}"
        )
    if mode == "delete":
        report.removed = conn.execute(_SQL["sync_delete"]).rowcount
    else:
        report.deactivated = conn.execute(_SQL["sync_deactivate"]).rowcount
    conn.execute(_SQL["drop_sync_skus"])


def upsert_rows(conn: psycopg.Connection, rows: list[CatalogRow]) -> tuple[int, int]:
    """Insert or update rows already checked by `parse_row` (skus distinct), in one transaction,
    through the same staging table and upsert as an import: (inserted, updated). The service's
    PUT /v1/products/{sku} writes this way, so its products are queued exactly as imported ones."""
    with conn.transaction():
        conn.execute(_SQL["create_staging"])
        counts = _write_chunk(conn, rows)
        conn.execute(_SQL["drop_staging"])
    return counts


def _repeated_skus(path: Path, fmt: CatalogFormat, show: bool, ignore_unknown: bool) -> dict[str, int]:
    """sku -> line of its last row, for the skus on more than one line (first pass, skus only).
    Header and unknown-key errors come up here, before anything is written."""
    last_line: dict[str, int] = {}
    repeated: set[str] = set()
    with open_catalog(path) as stream, _bar(path, "checking skus", show) as bar:
        for count, item in enumerate(iter_records(stream, fmt, ignore_unknown=ignore_unknown)):
            if count % CHUNK_ROWS == 0:
                bar.update(stream.buffer.tell() - bar.n)
            if isinstance(item, CatalogRowError):
                continue
            line, record = item
            try:
                sku = clean_sku(record.get("sku"))
            except ValueError:
                continue  # the second pass reports it
            if sku is None:
                continue
            if sku in last_line:
                repeated.add(sku)
            last_line[sku] = line
    return {sku: last_line[sku] for sku in repeated}


def _valid_rows(
    stream: TextIO,
    fmt: CatalogFormat,
    superseded: dict[str, int],
    bad_rows: list[CatalogRowError],
    kept_skus: list[str],
    *,
    base_dir: str,
    ignore_unknown: bool,
) -> Iterator[CatalogRow]:
    """The rows to write, in file order; every other line that held a record goes to bad_rows,
    and its sku, where it can be read, to kept_skus."""
    for item in iter_records(stream, fmt, ignore_unknown=ignore_unknown):
        if isinstance(item, CatalogRowError):
            bad_rows.append(item)
            continue
        line, record = item
        try:
            row = parse_row(record, line, base_dir)
        except CatalogRowError as exc:
            bad_rows.append(exc)
            with contextlib.suppress(ValueError):
                if sku := clean_sku(record.get("sku")):
                    kept_skus.append(sku)
            continue
        last = superseded.get(row.sku, line)
        if last != line:
            reason = f"sku {row.sku!r} appears again on line {last}, which replaces this row"
            bad_rows.append(CatalogRowError(line, reason))
            continue
        yield row


def _read_ahead(
    rows: Iterator[CatalogRow], stream: TextIO
) -> Generator[tuple[list[CatalogRow], int], None, None]:
    """Chunks of up to CHUNK_ROWS rows, each with the file position after it.

    A thread reads and checks the next chunk while the database writes the current one:
    on two cores the parsing then costs no time (the database takes longer).
    Only that thread touches ``rows``, ``stream`` and the bad-row list until this ends.
    """

    def read_chunk() -> tuple[list[CatalogRow], int]:
        chunk = list(islice(rows, CHUNK_ROWS))
        return chunk, stream.buffer.tell()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodvec-import") as reader:
        upcoming = reader.submit(read_chunk)
        while (current := upcoming.result())[0]:
            upcoming = reader.submit(read_chunk)
            yield current


def _write_chunk(conn: psycopg.Connection, chunk: list[CatalogRow], *, remember_skus: bool = False) -> tuple[int, int]:
    """COPY one chunk into staging and merge it into products; (inserted, updated).
    ``remember_skus``: also note the chunk's skus for a sync."""
    conn.execute(_SQL["truncate_staging"])
    with conn.cursor() as cur:
        with cur.copy(_SQL["copy_staging"]) as copy:
            copy.set_types(list(_COPY_TYPES))
            for row in chunk:
                copy.write_row(row)
        inserted, updated = cur.execute(_SQL["upsert"]).fetchone() or (0, 0)
        if remember_skus:
            cur.execute(_SQL["remember_skus"])
    return inserted, updated


def _bar(path: Path, desc: str, show: bool) -> tqdm:
    return tqdm(
        total=path.stat().st_size, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        disable=not show, leave=False, file=sys.stderr,
    )
