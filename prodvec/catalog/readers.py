"""Catalog files, CSV or JSON Lines, read as (line number, record) pairs.

Line numbers are physical lines in the file (CSV: the header is line 1; a record whose quoted
field spans several lines has the number of its first line), so a user can jump to them.
Only the columns in `rows.COLUMNS` are kept. A column or key outside them is an error naming
the column it probably meant (a misspelt ``stok`` would otherwise leave every product out of
stock), unless ``ignore_unknown`` says to skip such columns.
"""
from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Literal, TextIO, cast

from prodvec.catalog.rows import COLUMNS, REQUIRED_COLUMNS
from prodvec.errors import CatalogRowError, ConfigError

CatalogFormat = Literal["csv", "jsonl"]
#: Format names and file suffixes (without the dot) -> format: the choices for a --format flag.
FORMATS: dict[str, CatalogFormat] = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}

#: A record (column -> raw value) and the line it starts on.
Record = tuple[int, Mapping[str, object]]


def detect_format(path: Path, forced: str | None = None) -> CatalogFormat:
    """``forced`` when given (csv, jsonl or ndjson), else the file suffix's format."""
    name = forced if forced is not None else path.suffix.lower().lstrip(".")
    try:
        return FORMATS[name.lower()]
    except KeyError:
        what = f"format {forced!r}" if forced is not None else f"the format of {path.name!r}"
        raise ConfigError(
            f"unknown {what}: name the file .csv, .jsonl or .ndjson, or give the format "
            "(--format csv|jsonl|ndjson; format= in Python)"
        ) from None


def open_catalog(path: Path) -> TextIO:
    """The file as text. utf-8-sig drops the BOM that spreadsheet exports add;
    surrogateescape lets invalid UTF-8 through to the row checks, which report it per row."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def iter_records(
    stream: TextIO, fmt: CatalogFormat, *, ignore_unknown: bool = False
) -> Iterator[Record | CatalogRowError]:
    """Records in file order; unreadable lines come as `CatalogRowError` and reading goes on.

    A CSV header that lacks a required column (`rows.REQUIRED_COLUMNS`), repeats one or, unless
    ``ignore_unknown``, names an unknown one raises `CatalogRowError` for line 1: nothing in the
    file could be imported as meant. So does an unknown key in a JSON Lines record, for its line.
    """
    return _csv_records(stream, ignore_unknown) if fmt == "csv" else _jsonl_records(stream, ignore_unknown)


def unknown_column_reason(name: str, what: str = "column") -> str:
    """Why an unknown column or key is refused: the known column it is closest to, and the way out."""
    near = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
    guess = f" (did you mean {near[0]!r}?)" if near else ""
    return (
        f"unknown {what} {name!r}{guess}: prodvec reads {', '.join(COLUMNS)}; rename it, or import with "
        "--ignore-unknown-columns to leave such columns out"
    )


def _csv_records(stream: TextIO, ignore_unknown: bool) -> Iterator[Record | CatalogRowError]:
    # csv.reader rather than DictReader: DictReader skips blank lines without telling (so the
    # start line of the next record is lost) and silently pads or spills rows with the wrong
    # number of fields, which usually means an unquoted comma shifted every later column.
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        return
    columns = [name.strip().lower() for name in header]
    kept = [(index, name) for index, name in enumerate(columns) if name in COLUMNS]
    repeated = sorted({name for _, name in kept if columns.count(name) > 1})
    if repeated:
        raise CatalogRowError(1, f"the header names column {repeated[0]!r} more than once")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise CatalogRowError(
            1, f"the header has no {missing[0]!r} column (it has: {', '.join(header)}); "
               f"a catalog needs {' and '.join(REQUIRED_COLUMNS)}"
        )
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown and not ignore_unknown:
        raise CatalogRowError(1, unknown_column_reason(unknown[0]))
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CatalogRowError(start, f"malformed CSV: {exc}")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not fields:
            continue  # a blank line
        if len(fields) != len(columns):
            yield CatalogRowError(
                line,
                f"{len(fields)} fields where the header has {len(columns)} (an unquoted comma?)",
            )
            continue
        yield line, {name: fields[index] for index, name in kept}


def _jsonl_records(stream: TextIO, ignore_unknown: bool) -> Iterator[Record | CatalogRowError]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            # Decimal, not float: a price of 19.99 stays exactly 19.99 (and NaN is caught as one).
            record = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield CatalogRowError(line, f"invalid JSON: {reason}")
            continue
        if not isinstance(record, dict):
            yield CatalogRowError(line, f"expected a JSON object, found {type(record).__name__}")
            continue
        unknown = [key for key in record if key not in COLUMNS]
        if unknown and not ignore_unknown:
            raise CatalogRowError(line, unknown_column_reason(unknown[0], "key"))
        # Missing keys (a record without sku or price) are the row checks' to report.
        yield line, cast("dict[str, object]", record)
