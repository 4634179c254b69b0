"""`prodvec db start|stop|status|url`, `prodvec migrate`, `prodvec category-indexes` and
`prodvec index-check`."""
from __future__ import annotations

import argparse
import dataclasses

from prodvec.cli.output import print_json, print_report, print_table
from prodvec.config import Settings, load_settings
from prodvec.db.connection import EMBEDDED_DATABASE, checked_url, database_url, names_embedded_server, with_dbname
from prodvec.errors import ConfigError, WeightsUnavailable


def add_commands(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="the embedded PostgreSQL (used when DATABASE_URL is unset)")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    actions.add_parser("start", help="start it (or attach to it) and print its URL").set_defaults(handler=_start)
    actions.add_parser("stop", help="stop it").set_defaults(handler=_stop)
    status = actions.add_parser("status", help="is it running, and where")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    actions.add_parser("url", help="print the database URL prodvec uses").set_defaults(handler=_url)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema (alembic upgrade head)")
    migrate.add_argument(
        "--reset-embeddings",
        action="store_true",
        help="when the model's dimensions differ from the column's: drop all vectors and re-embed",
    )
    migrate.set_defaults(handler=_migrate)

    categories = commands.add_parser(
        "category-indexes",
        help="give each category with enough products its own HNSW index (fast, complete searches filtered "
             "to one category, near or far from the query); drops those of categories that fell below",
    )
    categories.add_argument("--min-products", type=int, default=1000,
                            help="embedded products a category needs for its own index [1000]")
    categories.add_argument("--json", action="store_true")
    categories.set_defaults(handler=_category_indexes)

    check = commands.add_parser(
        "index-check",
        help="search sampled products with their own vectors through the HNSW index: how many does it reach?",
    )
    check.add_argument("--sample", type=int, default=1000, help="products to search [1000]")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_index_check)


def _embedded_settings(settings: Settings) -> Settings:
    """``settings`` with the embedded server to manage; ConfigError when DATABASE_URL names
    another server. A URL of the embedded server itself (as `prodvec demo` prints) is fine."""
    if settings.database_url and not names_embedded_server(settings.database_url, settings.pgdata):
        raise ConfigError("DATABASE_URL is set: prodvec uses that server and manages no embedded one "
                          "(unset DATABASE_URL to manage the embedded server)")
    return dataclasses.replace(settings, database_url=None)


def _products_url(settings: Settings, server_url: str) -> str:
    """The products' database on the embedded server at ``server_url``, as `prodvec db url` prints
    it: DATABASE_URL where it names this server (`prodvec demo`'s prodvec_demo), else prodvec's own."""
    if settings.database_url:
        return checked_url(settings.database_url)
    return with_dbname(server_url, EMBEDDED_DATABASE)  # the server's own URL names `postgres`


def _start(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(_products_url(settings, database_url(_embedded_settings(settings))))  # starts it (or finds it running)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from prodvec.db.embedded import stop_server

    stopped = stop_server(_embedded_settings(load_settings()).pgdata)
    print("stopped" if stopped else "not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from prodvec.db.embedded import server_status

    settings = load_settings()
    if settings.database_url and not names_embedded_server(settings.database_url, settings.pgdata):
        report = {"embedded": False, "url": checked_url(settings.database_url)}
    else:
        state = server_status(settings.pgdata)
        url = _products_url(settings, state.url) if state.url else None
        report = {"embedded": True, "running": state.running, "url": url, "pgdata": str(settings.pgdata)}
    print_report(report, as_json=args.json)
    return 0


def _url(args: argparse.Namespace) -> int:
    print(database_url())
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import psycopg

    from prodvec.db.active_model import choose_model, read_active_model, record_active_model
    from prodvec.db.migrate import upgrade_schema

    settings = load_settings()
    url = database_url(settings)
    with psycopg.connect(url) as conn:
        recorded = read_active_model(conn)  # None for a new catalog (or a schema before 0007)
    model = choose_model(recorded, settings, change=args.reset_embeddings)
    if model != recorded:
        try:
            check_weights(model.spec, settings.device)
        except WeightsUnavailable as exc:
            raise WeightsUnavailable(
                f"{exc}; then run `prodvec migrate` again (the database was left as it was)"
            ) from exc
    upgrade_schema(url)
    with psycopg.connect(url) as conn:
        if recorded is None:  # the migration records a catalog embedded before the active model was
            recorded = read_active_model(conn)
            model = choose_model(recorded, settings, change=args.reset_embeddings)
        changed = record_active_model(conn, model, drop_embeddings=args.reset_embeddings)
    if not changed:
        note = ""
    elif recorded is None:
        note = " (recorded)"
    else:
        note = f" (was {recorded}: every vector dropped, all products queued; run `prodvec worker`)"
    print(f"schema up to date; active model {model}{note}")
    return 0


def check_weights(model: str, device: str | None) -> None:
    """WeightsUnavailable (saying what to do) when the model's weights cannot be had here, so
    migrate does not size the column for a model no worker can load.

    Cheap where that can tell: random weights need none; a hub tag is fine while the hub answers
    (the worker downloads it). Otherwise the encoder is loaded, which fails as the worker would:
    a hub tag without the hub loads only from the local cache (or fails at once), a checkpoint
    file must exist and fit, the offline encoder needs its package.
    """
    from prodvec.encode import WeightSource, load_encoder, parse_spec
    from prodvec.encode.hub import hub_or_cache

    source = parse_spec(model).source
    if source is WeightSource.RANDOM:
        return
    if source is WeightSource.HUB:
        with hub_or_cache() as hub_unreachable:
            if hub_unreachable is None:
                return
    load_encoder(model, device)


def _category_indexes(args: argparse.Namespace) -> int:
    from prodvec.worker.bulk import index_categories

    if args.min_products < 1:
        raise ConfigError("--min-products must be at least 1")
    rows = index_categories(database_url(), min_products=args.min_products)
    if args.json:
        print_json(rows)
    elif rows:
        print_table(rows, ["category", "products", "index_name", "action"])
    else:
        print(f"no category has {args.min_products} embedded products: no per-category indexes")
    return 0


#: Below this share of sampled products found, index-check says what to do about it.
REACH_WARNING_SHARE = 0.99


def _index_check(args: argparse.Namespace) -> int:
    from prodvec.worker.bulk import index_reachability

    if args.sample < 1:
        raise ConfigError("--sample must be at least 1")
    report = index_reachability(database_url(), sample=args.sample)
    print_report(report, as_json=args.json)
    if not args.json and report["share"] is not None and report["share"] < REACH_WARNING_SHARE:
        print(
            f"{1 - report['share']:.1%} of the sampled products are out of the index's reach: plain SQL "
            "searches miss them (Product.similar_to's exact passes do not). A rebuild gives a new graph "
            "(REINDEX INDEX products_embedding_hnsw); denser ones reach more (prodvec_hnsw_options())."
        )
    return 0
