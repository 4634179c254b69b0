"""`prodvec import CATALOG`: upsert products from CSV or JSONL."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prodvec.cli.output import print_json
from prodvec.db.connection import connect


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("import", help="upsert products by sku from a .csv or .jsonl catalog")
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from prodvec.catalog import import_catalog

    with connect() as conn:
        report = import_catalog(conn, args.catalog)
    bad = [{"line": error.line, "reason": error.reason} for error in report.bad_rows]
    if args.json:
        print_json({
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "bad_rows": bad,
            "seconds": round(report.seconds, 3),
        })
        return 0
    for row in bad:
        print(f"{args.catalog}:{row['line']}: skipped: {row['reason']}", file=sys.stderr)
    print(
        f"imported {args.catalog}: {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(bad)} bad row(s) skipped in {report.seconds:.1f} s"
    )
    return 0
