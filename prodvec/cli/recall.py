"""`prodvec recall`: measure the recall of index searches on this catalog, tune the effort to
a target (stored: every search uses it), or keep watching it."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from prodvec.cli.output import print_json, print_table
from prodvec.errors import ConfigError

log = logging.getLogger("prodvec.cli.recall")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "recall", help="measure recall@10 of index searches against exact ones; --tune: meet a target",
        description="Samples queries (products' own vectors, vectors turned away from the catalog or mixed, "
        "recorded ones), searches them through the index as prodvec does and exactly, per kind of index "
        "search (unfiltered, iterative scan, quick look, a category's own index), and reports recall@10. "
        "--tune finds the least hnsw.ef_search per kind and query distance that meets --target and stores "
        "it: every search (Python, CLI, service) uses it within a minute.")
    parser.add_argument("--tune", action="store_true", help="find and store the least effort meeting --target")
    parser.add_argument("--target", type=float, default=None,
                        help="recall@10 to meet (default 0.95; --watch: the stored tuning's)")
    parser.add_argument("--queries", type=int, default=60, help="sampled queries per filter (default 60)")
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="time bound: stop sampling after this long and report what was measured (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vectors", type=Path, help="also sample these recorded query vectors (.npy, N×D)")
    parser.add_argument("--texts", type=Path,
                        help="also sample these text queries, one a line, encoded by PRODVEC_MODEL (CLIP models)")
    parser.add_argument("--index-only", action="store_true",
                        help="with --tune: never answer a band exactly; where no hnsw.ef_search (up to 1000) reaches "
                        "the target, keep 1000 and report the recall it reaches (exact answers cost a scan of the "
                        "matching products: see the report's p50)")
    parser.add_argument("--database-default", action="store_true",
                        help="with --tune: ALTER DATABASE ... SET hnsw.ef_search to the unfiltered figure, for "
                        "plain SQL in new sessions (prodvec's own searches set theirs per query)")
    parser.add_argument("--show", action="store_true", help="print what is stored, measure nothing")
    parser.add_argument("--watch", action="store_true",
                        help="re-measure on a schedule and after big imports, warn below target, export metrics")
    parser.add_argument("--every", type=float, default=6 * 3600.0, help="--watch: seconds between measurements")
    parser.add_argument("--growth", type=float, default=0.1,
                        help="--watch: also re-measure once the embedded products changed by this share (0.1)")
    parser.add_argument("--metrics-port", type=int, help="--watch: serve Prometheus metrics on this port")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_recall)


def _recall(args: argparse.Namespace) -> int:
    from prodvec import session
    from prodvec.recall import store
    from prodvec.recall.report import DEFAULT_TARGET, Options

    target = args.target if args.target is not None else (None if args.watch else DEFAULT_TARGET)
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target is a recall between 0 and 1, not {target}")
    if args.queries < 1 or args.seconds <= 0:
        raise ConfigError("--queries and --seconds must be positive")
    options = Options(per_case=args.queries, seconds=args.seconds, seed=args.seed, given=_given(args),
                      exact_fallback=not args.index_only)
    if args.show:
        with session() as db:
            _print_stored(store.stored(db), as_json=args.json)
        return 0
    if args.watch:
        return _watch(args, options, target)
    with session() as db:
        report = _run(db, args, options, target)
        if args.database_default and args.tune:
            report["database_default"] = _set_database_default(db, report)
    _print(report, as_json=args.json)
    return 0


def _run(db: Any, args: argparse.Namespace, options: Any, target: float | None) -> dict[str, Any]:
    from prodvec.recall.report import DEFAULT_TARGET, measure_recall, tune_recall

    if args.tune:
        return tune_recall(db, options, target if target is not None else DEFAULT_TARGET)
    return measure_recall(db, options)


def _given(args: argparse.Namespace) -> list[np.ndarray]:
    given: list[np.ndarray] = []
    if args.vectors is not None:
        try:
            vectors = np.load(args.vectors)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read --vectors {args.vectors}: {exc} (save an N×D array with numpy.save)") from None
        if vectors.ndim != 2 or not np.all(np.isfinite(vectors)) or not np.all(np.linalg.norm(vectors, axis=1) > 0):
            raise ConfigError(f"--vectors {args.vectors} must hold an N×D array of finite, non-zero vectors")
        given.extend(vectors.astype(np.float32))
    if args.texts is not None:
        from prodvec.search.query import Text, resolve

        try:
            texts = [line.strip() for line in args.texts.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read --texts {args.texts}: {exc.strerror}") from None
        from prodvec import session

        with session() as db:
            given.extend(vector.vector for vector in resolve(db, [Text(text) for text in texts], robust=False))
    return given


def _set_database_default(db: Any, report: dict[str, Any]) -> str | None:
    from prodvec.recall.report import database_default

    statement = database_default(db, report)
    if statement:
        print(f"set for new sessions of this database: {statement}")
    return statement


def _watch(args: argparse.Namespace, options: Any, target: float | None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from prodvec import session
    from prodvec.recall import store, watch
    from prodvec.recall.report import embedded_products

    def measure() -> None:
        with session() as db:
            report = _run(db, args, options, target)
        log.info("recall measured on %s queries in %s s", report["queries"], report["seconds"])

    def read_stored() -> list[dict[str, Any]]:
        with session() as db:
            return store.stored(db)

    def read_safely() -> list[dict[str, Any]] | None:
        try:
            return read_stored()
        except SQLAlchemyError as exc:  # a scrape must not fail for a database that went away
            log.debug("metrics: recall unavailable: %s", exc)
            return None

    def products() -> float:
        with session() as db:
            return embedded_products(db)

    server = watch.serve_metrics(read_safely, port=args.metrics_port) if args.metrics_port else None
    try:
        watch.watch(measure, products, read_stored, watch.Schedule(args.every, args.growth), target=target)
    finally:
        if server is not None:
            server.shutdown()
    return 0


def _print(report: dict[str, Any], *, as_json: bool) -> None:
    from prodvec.search.effort import EXACT

    if as_json:
        print_json(report)
        return
    tuned = "target" in report
    print(f"recall@10 of index searches against exact ones: {report['queries']} queries measured "
          f"({report['sampled']} sampled) in {report['seconds']} s" + (f", target {report['target']}" if tuned else ""))
    rows = []
    for kind, figures in report["kinds"].items():
        if tuned:
            before, after = figures["before"], figures["after"]
            rows.append({"kind": kind, "band": "all", "queries": after["queries"],
                         "recall": after["recall"], "worst 10%": after["worst_decile"], "ef_search": after["ef_search"],
                         "p50 ms": after["p50_ms"], "before: recall": before["recall"],
                         "ef_search ": before["ef_search"], "p50 ms ": before["p50_ms"],
                         "exact": after["exact"], **figures["by_source"]["after"]})
        else:
            rows.append({"kind": kind, "band": "all", "queries": figures["queries"], "recall": figures["recall"],
                         "worst 10%": figures["worst_decile"], "ef_search": figures["ef_search"],
                         "p50 ms": figures["p50_ms"], "exact": figures["exact"], **figures["by_source"]})
        for band in figures["bands"]:
            rows.append({"kind": "", "band": band["band"], "max distance": band.get("max_distance"),
                         "queries": band["queries"], "recall": band["recall"], "worst 10%": band["worst_decile"],
                         "ef_search": band["ef_search"], "p50 ms": band["p50_ms"]})
    for row in rows:  # a band the exact pass answers
        row["ef_search"] = "exact" if row["ef_search"] == EXACT else row["ef_search"]
    columns = ["kind", "band", "max distance", "queries", "recall", "worst 10%", "ef_search", "p50 ms"]
    if tuned:
        columns += ["before: recall", "ef_search ", "p50 ms "]
    columns += ["exact", "own", "turned", "mixed", "given"]
    print_table(rows, columns)
    _explain_codes(report["kinds"])
    for kind, figures in report["kinds"].items():
        measured = figures["after"] if tuned else figures
        if not measured["queries"] and measured["exact"]:
            print(f"{kind}: the index answered none of its {measured['exact']} queries (each pass came back short, "
                  "so the exact pass answered: complete, but slower at scale); the catalog holds fewer products than "
                  "a pass's candidate list, or the filters keep too few")
    if tuned:
        short = [kind for kind, figures in report["kinds"].items() if not figures["meets_target"]]
        if short:
            print(f"below target even at hnsw.ef_search 1000: {', '.join(short)} (see their recall)")
        advice = {kind: figures["sql"] for kind, figures in report["kinds"].items() if figures["sql"]}
        if advice:
            print("plain SQL, for the same recall with one setting for every query (pgvector):")
        for kind, sql in advice.items():
            print(f"  {kind}: {sql}")


def _print_stored(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("nothing measured yet: run `prodvec recall` (or `prodvec recall --tune`)")
        return
    from prodvec.search.effort import effort_label

    shown = [{**row, "ef_search": effort_label(row["ef_search"])} for row in rows]
    print_table(shown, ["kind", "band", "max_distance", "ef_search", "recall", "worst_decile", "queries", "target",
                        "products", "measured_at"])
    _explain_codes(row["kind"] for row in rows)


def _explain_codes(kinds: Iterable[str]) -> None:
    if any(kind.startswith("codes_") for kind in kinds):
        print("codes_* (searches through the binary-code index): ef_search is how many candidates are re-ranked")
