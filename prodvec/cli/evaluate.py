"""`prodvec eval QUERIES.csv`: measure search quality on your own catalog with labelled photos."""
from __future__ import annotations

import argparse
from pathlib import Path

from prodvec.cli.output import print_json, print_table


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="score search on the current database with labelled query photos (recall@k, MRR, precision@k)",
        description=(
            "QUERIES is a CSV with an 'image' column (path relative to the CSV, or URL) and a 'sku' column "
            "(the product the photo shows: recall@1/5/10 and MRR) and/or a 'category' column "
            "(precision@k: the share of the k results in that category)."
        ),
    )
    parser.add_argument("queries", type=Path, metavar="QUERIES")
    parser.add_argument("-k", type=int, default=10, help="results judged per query for precision@k (default 10)")
    parser.add_argument(
        "--robust", action=argparse.BooleanOptionalAction, default=None,
        help="robust query embedding (default: as searches do)",
    )
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from prodvec import session
    from prodvec.config import load_settings
    from prodvec.db.active_model import catalog_settings, session_connection
    from prodvec.db.model_registry import load_active_encoder
    from prodvec.evaluate import evaluate, read_queries

    queries = read_queries(args.queries)
    with session() as db:
        settings = catalog_settings(session_connection(db), load_settings())  # the catalog's model
        robust = settings.robust_queries if args.robust is None else args.robust
        encoder = load_active_encoder(session_connection(db), settings)  # the one searches embed photos with
        result = evaluate(db, queries, k=args.k, robust=robust, encoder=encoder, policy=settings.catalog_policy)
    if args.json:
        print_json(result.as_dict())
        return 0
    print(f"{result.n} queries, model {result.model}, robust query embedding {'on' if result.robust else 'off'}")
    rows = [
        {"metric": name, "value": value, "queries": result.n_category if name.startswith("precision") else result.n_sku}
        for name, value in result.scores.items()
    ]
    print_table(rows, ["metric", "value", "queries"])
    return 0
