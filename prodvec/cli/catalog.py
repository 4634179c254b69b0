"""`prodvec import CATALOG`: upsert products from CSV or JSONL."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prodvec.catalog.importer import MAX_REMOVE_SHARE, SyncMode
from prodvec.catalog.readers import FORMATS
from prodvec.cli.output import print_json
from prodvec.db.connection import connect
from prodvec.errors import ConfigError

#: Exit codes of `prodvec import` (2, an error with nothing imported, is every command's).
IMPORTED_ALL = 0
SKIPPED_ROWS = 1

EXIT_CODES = """\
exit codes:
  0  every row imported
  1  imported, but some bad rows were skipped (listed on stderr, or under "bad_rows" with --json)
  2  error, nothing imported: no such file, unknown format, a header without sku or price or
     with an unknown column, an empty file, any bad row with --strict, a sync over its bound
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "import",
        help="upsert products by sku from a .csv or .jsonl catalog",
        description="Insert or update products by sku from a CSV (header: sku,title,category,price,stock,image; "
                    "sku and price required) or JSON Lines catalog, in one transaction.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--format", choices=sorted(FORMATS), help="the file's format [from its suffix]")
    parser.add_argument("--strict", action="store_true",
                        help="any bad row fails the whole import (nothing is written); by default bad rows are skipped")
    parser.add_argument("--ignore-unknown-columns", action="store_true",
                        help="leave out columns (JSON keys) prodvec does not read, instead of refusing the file")
    parser.add_argument("--sync", action="store_true",
                        help="the file is the whole catalog: delete the products whose sku is not in it (a bad row "
                             "keeps its product when its sku can be read)")
    parser.add_argument("--deactivate", action="store_true",
                        help="with --sync: keep those products, with stock 0, instead of deleting them")
    parser.add_argument("--max-remove-share", type=float, default=MAX_REMOVE_SHARE, metavar="SHARE",
                        help="with --sync: refuse (and import nothing) when more than this share of the catalog "
                             f"would go [{MAX_REMOVE_SHARE}]; 1 allows any")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from prodvec.catalog import import_catalog

    if args.deactivate and not args.sync:
        raise ConfigError("--deactivate goes with --sync: it says what a sync does with products not in the file")
    if not 0 <= args.max_remove_share <= 1:
        raise ConfigError(f"--max-remove-share is a share between 0 and 1, not {args.max_remove_share}")
    sync: SyncMode | None = ("deactivate" if args.deactivate else "delete") if args.sync else None
    with connect() as conn:
        report = import_catalog(
            conn, args.catalog, format=args.format, strict=args.strict,
            ignore_unknown_columns=args.ignore_unknown_columns, sync=sync, max_remove_share=args.max_remove_share,
        )
    bad = [{"line": error.line, "reason": error.reason} for error in report.bad_rows]
    code = SKIPPED_ROWS if bad else IMPORTED_ALL
    if args.json:
        print_json({
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "removed": report.removed,
            "deactivated": report.deactivated,
            "bad_rows": bad,
            "seconds": round(report.seconds, 3),
        })
        return code
    for row in bad:
        print(f"{args.catalog}:{row['line']}: skipped: {row['reason']}", file=sys.stderr)
    synced = ""
    if sync == "delete":
        synced = f", {report.removed} not in the file deleted"
    elif sync == "deactivate":
        synced = f", {report.deactivated} not in the file set to stock 0"
    print(
        f"imported {args.catalog}: {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged{synced}, {len(bad)} bad row(s) skipped in {report.seconds:.1f} s"
    )
    return code
