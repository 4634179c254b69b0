"""`prodvec model`: the catalog's active model (recorded in the database) and its coverage."""
from __future__ import annotations

import argparse
import sys

from prodvec.cli.output import print_report


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "model", help="the catalog's active model (spec, dimensions, catalog views) and how many products it embedded",
        description="Every process uses the model recorded in the database when the catalog was first migrated or "
                    "embedded; PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS choose it for a new catalog only.",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_model)


def _model(args: argparse.Namespace) -> int:
    from prodvec.config import load_settings
    from prodvec.db.active_model import choose_model, model_coverage, read_active_model, settings_model
    from prodvec.db.connection import connect, database_url
    from prodvec.errors import ModelMismatch

    settings = load_settings()
    with connect(database_url(settings)) as conn:
        active = read_active_model(conn)
        embedded, products = model_coverage(conn, active) if active else (0, 0)
    report = {
        "spec": active.spec if active else None,
        "dimensions": active.dimensions if active else None,
        "catalog_views": active.catalog_views if active else None,
        "embedded": embedded,
        "products": products,
        "coverage": round(embedded / products, 4) if products else None,
    }
    print_report(report, as_json=args.json)
    # What this shell's settings would do with it: say so, beside the report.
    if active is None:
        print(f"no active model recorded yet: `prodvec migrate` (or the first `prodvec worker`) records "
              f"{settings_model(settings)} from PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS", file=sys.stderr)
    else:
        try:
            choose_model(active, settings)
        except ModelMismatch as exc:
            print(f"note: {exc}", file=sys.stderr)
    return 0
