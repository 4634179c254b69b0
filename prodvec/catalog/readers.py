"""Catalog files, CSV or JSON Lines, read as (line number, record) pairs.

Line numbers are physical lines in the file (CSV: the header is line 1; a record whose quoted
field spans several lines has the number of its first line), so a user can jump to them.
Only the columns in `rows.COLUMNS` are kept. A column or key outside them is an error naming
the column it probably meant (a misspelt ``stok`` would otherwise leave every product out of
stock), unless ``ignore_unknown`` says to skip such columns.
"""
from __future__ import annotations

import codecs
import csv
import difflib
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO, cast

from prodvec.catalog.rows import COLUMNS, REQUIRED_COLUMNS
from prodvec.errors import CatalogError, CatalogRowError, ConfigError

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader

CatalogFormat = Literal["csv", "jsonl"]
#: Format names and file suffixes (without the dot) -> format: the choices for a --format flag.
FORMATS: dict[str, CatalogFormat] = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}

#: A record (column -> raw value) and the line it starts on.
Record = tuple[int, Mapping[str, object]]


def detect_format(path: Path, forced: str | None = None) -> CatalogFormat:
    """``forced`` when given (csv, jsonl or ndjson), else the file suffix's format."""
    choices = "--format csv|jsonl|ndjson; format= in Python"
    if forced is not None:
        if forced.lower() in FORMATS:
            return FORMATS[forced.lower()]
        raise ConfigError(f"unknown format {forced!r}: give one of csv, jsonl or ndjson ({choices})")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return FORMATS[suffix]
    ending = f"its extension .{suffix}" if suffix else "a name without an extension"
    raise ConfigError(
        f"cannot tell the format of {path.name!r} from {ending}: name the file .csv, .jsonl or .ndjson, "
        f"or give the format ({choices})"
    )


#: Separators other than the comma that catalog files come with, and their names.
_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs"}
#: Byte order marks of the encodings spreadsheets and Windows tools save "Unicode text" in.
_FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                 (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
#: Bytes read to judge a file's encoding.
_SNIFF_BYTES = 4096


def open_catalog(path: Path) -> TextIO:
    """The file as text. utf-8-sig drops the BOM that spreadsheet exports add;
    surrogateescape lets invalid UTF-8 in a row through to the row checks, which report it per row.
    A file that is not UTF-8 at all (UTF-16, or a first line UTF-8 cannot read) is CatalogError:
    its header would otherwise come out as garbage column names."""
    _check_utf8(path)
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _check_utf8(path: Path) -> None:
    with open(path, "rb") as raw:
        head = raw.read(_SNIFF_BYTES)
    save = "save it as UTF-8 (in a spreadsheet: CSV UTF-8)"
    # UTF-32's LE mark starts with UTF-16's: the longer marks are tried first.
    looks = next((name for bom, name in _FOREIGN_BOMS if head.startswith(bom)), None)
    if looks is None and b"\x00" in head:
        # UTF-16 without a mark: every other byte is zero in ASCII text. Zeros elsewhere: binary.
        if max(head[0::2].count(0), head[1::2].count(0)) < len(head) // 4:
            raise CatalogError(f"catalog file {path} is not text (it holds zero bytes; a spreadsheet's own file?): "
                               "export it as CSV UTF-8 or JSON Lines")
        looks = "UTF-16"
    if looks:
        raise CatalogError(f"catalog file {path} is not UTF-8 (it looks like {looks}): {save}")
    first_line = head.split(b"\n", 1)[0]
    try:
        first_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(first_line) < len(head) or exc.start < len(first_line) - 3:  # not a character cut at 4 KB
            raise CatalogError(
                f"catalog file {path} is not UTF-8 (its first line has bytes UTF-8 cannot read, as in "
                f"Latin-1 or Windows-1252 files): {save}"
            ) from None


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
    separator = next((char for char in _OTHER_SEPARATORS if len(header) == 1 and char in header[0]), None)
    if missing and separator:  # a spreadsheet's export in a locale whose lists use semicolons, or a TSV
        raise CatalogRowError(
            1, f"the header is one column, {header[0]!r}: the file seems to be separated by "
               f"{_OTHER_SEPARATORS[separator]} ({separator!r}), and prodvec reads comma-separated CSV; save it "
               "with commas (in a spreadsheet: CSV UTF-8, comma-delimited) or as JSON Lines"
        )
    if missing:
        raise CatalogRowError(
            1, f"the header has no {missing[0]!r} column (it has: {', '.join(header)}); "
               f"a catalog needs {' and '.join(REQUIRED_COLUMNS)}"
        )
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown and not ignore_unknown:
        raise CatalogRowError(1, unknown_column_reason(unknown[0]))
    records = _csv_rows(reader)
    record = next(records, None)
    while record is not None:
        line, fields = record
        end = reader.line_num
        record = next(records, None)  # one ahead: None when this record ran to the end of the file
        if isinstance(fields, csv.Error):
            yield CatalogRowError(line, f"malformed CSV: {fields}")
        elif len(fields) != len(columns) and fields:  # no fields: a blank line
            yield CatalogRowError(
                line, f"{len(fields)} fields where the header has {len(columns)} "
                      f"({_likely_cause(fields, len(columns), line, end, last=record is None)})",
            )
        elif fields:
            yield line, {name: fields[index] for index, name in kept}


def _csv_rows(reader: _CsvReader) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """Each record's first line and its fields, or the csv.Error it could not be read for."""
    start = reader.line_num + 1
    while True:
        try:
            fields: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            fields = exc
        yield start, fields
        start = reader.line_num + 1


def _likely_cause(fields: list[str], expected: int, line: int, end: int, *, last: bool) -> str:
    """Why a record has the wrong number of fields, as far as its text tells."""
    if end > line and any("\n" in field or "\r" in field for field in fields):
        # A quote that is not closed on its line takes the following lines into one field.
        if last:
            return f"a quote opened on line {line} is never closed"
        return (f"a quote opened on line {line} is only closed on line {end}: close it on its line, "
                'and double a quote inside a field ("")')
    return "an unquoted comma?" if len(fields) > expected else "a missing field or comma?"


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
