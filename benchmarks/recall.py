"""Recall you choose: recall@10 and p50 of prodvec's searches before and after `prodvec recall
--tune`, near and far queries, on two catalogs of different spread, side by side.

    python benchmarks/recall.py [--rows 100000] [--queries 40] [--target 0.95] [--per-case 60]

Catalogs: filtered_search.py's synthetic one (512-d, 20 categories of 10 clusters, products
of a cluster varying along 16 directions: "tight"), and the same products with isotropic
noise added (cosine ~0.8 to where they were: "loose"; a wider spread in every direction, which
graph indexes find harder). Loaded as that benchmark loads (binary COPY, then the HNSW index
of the migrations: m=32, ef_construction=200); no per-category indexes (their build takes
minutes per catalog), so the "category" kind is not measured here.

Queries, fresh (not the tuning's sample): "near": a new product of a random cluster (the
benchmark's generator) and products' own vectors (more like this, itself excluded); "far":
a product's vector turned away from it (cosine 0.1-0.6, as sample.py turns them) and the mix
of two products of one category (as sample.py mixes them: mixing two categories makes queries
whose neighbours split between two regions of the graph, which no ef_search up to 1000 finds
both of, so tuning sends them exact). Filters: none, a price range keeping half the
catalog (an iterative scan), one category under its median price (~2.5%: a quick look).
Truth: numpy brute force over the stored halfvec values. Each query runs through
Product.similar_to's path (prodvec.search.similar_to) before tuning (as planned), after
`--tune --index-only` (ef_search up to 1000, never exact) and after `--tune` (bands that no
ef_search brings to the target answered exactly); the tunings' and a re-measurement's time
are the "measuring time".
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as filtered_search.py: leave the cores to the database

import argparse
import dataclasses
import shutil
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
from filtered_search import CATEGORIES, CLUSTERS_PER_CATEGORY, Catalog, configure, load, make_catalog
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from prodvec.db.connection import sqlalchemy_url
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.models import Product
from prodvec.recall.report import Options, measure_recall, tune_recall
from prodvec.search import plan, similar_to
from prodvec.search.effort import EXACT

K = 10
TIE = 1e-4
FILTERS = ("none", "price_half", "category_price")
#: Data version, part of the database name (a kept --pgdata with other data is not reused).
DATA_VERSION = 1


def loosen(catalog: Catalog, seed: int) -> Catalog:
    """The same products moved by isotropic noise: cosine ~0.8 to where they were."""
    rng = np.random.default_rng(seed)
    vectors = catalog.vectors.astype(np.float32)
    noise = rng.standard_normal(vectors.shape).astype(np.float32) * (0.75 / np.sqrt(vectors.shape[1]))
    moved = vectors + noise
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    return dataclasses.replace(catalog, vectors=moved.astype(np.float16))


@dataclasses.dataclass(frozen=True)
class Query:
    placement: str  # near | far
    filter: str
    vector: np.ndarray
    exclude_row: int | None
    category: int  # for category_price
    max_price: float


def make_queries(catalog: Catalog, per_cell: int, seed: int) -> list[Query]:
    rng = np.random.default_rng(seed + 100)
    stored = _unit(catalog.vectors.astype(np.float32))
    rows = len(stored)
    queries = []
    for name in FILTERS:
        for i in range(per_cell):  # near: half fresh products, half own vectors
            row = int(rng.integers(rows))
            if i % 2:
                queries.append(_query("near", name, stored[row], row, catalog, rng))
            else:
                cluster = int(rng.integers(CATEGORIES * CLUSTERS_PER_CATEGORY))
                queries.append(_query("near", name, catalog.generator(cluster, 1)[0], None, catalog, rng,
                                      category=cluster // CLUSTERS_PER_CATEGORY))
        for i in range(per_cell):  # far: turned away, or two products of one category mixed
            row = int(rng.integers(rows))
            if i % 2:
                away = rng.standard_normal(stored.shape[1]).astype(np.float32)
                away -= (away @ stored[row]) * stored[row]
                cosine = rng.uniform(0.1, 0.6)
                vector = cosine * stored[row] + np.sqrt(1 - cosine**2) * _unit(away)
            else:
                others = np.flatnonzero(catalog.category == catalog.category[row])
                other = int(rng.choice(others[others != row]))
                vector = stored[row] + stored[other]
            queries.append(_query("far", name, _unit(vector), None, catalog, rng))
    return queries


def _query(placement: str, name: str, vector: np.ndarray, row: int | None, catalog: Catalog,
           rng: np.random.Generator, category: int | None = None) -> Query:
    if category is None:
        category = int(catalog.category[row]) if row is not None else int(rng.integers(CATEGORIES))
    max_price = float(np.median(catalog.price[catalog.category == category]))
    return Query(placement, name, vector.astype(np.float32), row, category, max_price)


def mask(query: Query, catalog: Catalog, low: float, high: float) -> np.ndarray:
    keep = np.ones(len(catalog.vectors), bool)
    if query.filter == "price_half":
        keep = (catalog.price >= low) & (catalog.price <= high)
    elif query.filter == "category_price":
        keep = (catalog.category == query.category) & (catalog.price <= round(query.max_price, 2))
    if query.exclude_row is not None:
        keep[query.exclude_row] = False
    return keep


def where(query: Query, low: float, high: float) -> list:
    if query.filter == "price_half":
        return [Product.price >= Decimal(f"{low:.2f}"), Product.price <= Decimal(f"{high:.2f}")]
    if query.filter == "category_price":
        return [Product.category == f"c{query.category:02d}", Product.price <= Decimal(f"{query.max_price:.2f}")]
    return []


def truth_kth(stored: np.ndarray, query: Query, keep: np.ndarray) -> float:
    q = query.vector.astype(np.float16).astype(np.float32)
    distances = 1 - stored[keep] @ (q / np.linalg.norm(q))
    return float(np.partition(distances, K - 1)[K - 1])


def run_queries(session: Session, catalog: Catalog, queries: list[Query], kths: list[float],
                low: float, high: float) -> list[tuple[float, float, str, float | None]]:
    """(recall@10, seconds, strategy, the result's recall figure) per query."""
    out = []
    for query, kth in zip(queries, kths, strict=True):
        vector = query.vector
        if query.exclude_row is not None:  # more like this: the product itself, by its id
            vector = session.get(Product, query.exclude_row + 1)
        started = time.perf_counter()
        result = similar_to(session, vector, k=K, where=where(query, low, high))
        seconds = time.perf_counter() - started
        correct = sum(hit.distance <= kth + TIE for hit in result)
        out.append((correct / K, seconds, result.strategy, result.recall))
        session.rollback()
        session.expunge_all()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40, help="fresh queries per filter and near/far (40)")
    parser.add_argument("--per-case", type=int, default=60, help="the tuning's sample: queries per filter (60)")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pgdata", type=Path, help="keep the server and databases here (reused when rerun)")
    parser.add_argument("--maintenance-work-mem", default="1GB")
    args = parser.parse_args()

    pgdata = args.pgdata or Path(tempfile.mkdtemp(prefix="prodvec-recall-")) / "pgdata"
    server = configure(ensure_server(pgdata), pgdata, "512MB")
    started = time.perf_counter()
    tight = make_catalog(args.rows, args.seed)
    catalogs = {"tight": tight, "loose": loosen(tight, args.seed)}
    lines = []
    try:
        for spread, catalog in catalogs.items():
            url = load(server, catalog, f"recall_v{DATA_VERSION}_{spread}_{args.rows}_{args.seed}",
                       args.maintenance_work_mem)
            lines += evaluate(url, spread, catalog, args)
    finally:
        if args.pgdata is None:
            stop_server(pgdata)
            shutil.rmtree(pgdata.parent, ignore_errors=True)
    print(f"\n{args.rows:,} rows, k={K}, target {args.target}, {args.queries} fresh queries per filter and "
          f"placement; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("recall@10 / lowest query's recall / p50 ms, each in the phases " + ", ".join(PHASES))
    print(f"{'catalog':>7} {'filter':>19} {'n':>4}  {'recall@10':^20}   {'min':^17}   {'p50 ms':^23}  "
          "strategies tuned / recall carried")
    for line in lines:
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


#: The phases each catalog's queries run in: untuned, tuned with the index always answering
#: (--index-only), tuned with the exact pass for bands no ef_search brings to the target.
PHASES = ("before", "index-only", "tuned")


def evaluate(url: str, spread: str, catalog: Catalog, args: argparse.Namespace) -> list[str]:
    stored = _unit(catalog.vectors.astype(np.float32))
    low, high = (float(x) for x in np.quantile(catalog.price, [0.25, 0.75]))
    low, high = round(low, 2), round(high, 2)
    queries = make_queries(catalog, args.queries, args.seed)
    kths = [truth_kth(stored, q, mask(q, catalog, low, high)) for q in queries]
    del stored
    engine = create_engine(sqlalchemy_url(url))
    results = {}
    with Session(engine) as session:
        session.execute(text("DELETE FROM prodvec_recall_settings"))  # a kept --pgdata: start untuned
        session.commit()
        for phase in PHASES:
            if phase != "before":
                timer = time.perf_counter()
                options = Options(per_case=args.per_case, seconds=900, seed=args.seed,
                                  exact_fallback=phase == "tuned")
                tuned = tune_recall(session, options, args.target)
                print(f"\n{spread}, {phase}: tuning took {time.perf_counter() - timer:.0f} s "
                      f"({tuned['queries']} sampled queries)")
                _print_tuning(tuned)
            plan.forget()
            run_queries(session, catalog, queries[:20], kths[:20], low, high)  # warm up
            results[phase] = run_queries(session, catalog, queries, kths, low, high)
        timer = time.perf_counter()
        measured = measure_recall(session, Options(per_case=args.per_case, seconds=900, seed=args.seed + 1))
        print(f"\n{spread}: re-measuring (`prodvec recall`, tuned) took {time.perf_counter() - timer:.0f} s "
              f"({measured['queries']} queries): " + ", ".join(
                  f"{kind} {figures['recall']:.3f}" if figures["recall"] is not None else f"{kind} all exact"
                  for kind, figures in measured["kinds"].items()))
    engine.dispose()
    lines = []
    for name in FILTERS:
        for placement in ("near", "far"):
            picked = [i for i, q in enumerate(queries) if q.filter == name and q.placement == placement]
            cells = {phase: [results[phase][i] for i in picked] for phase in PHASES}
            recall = " ".join(f"{np.mean([r for r, *_ in cells[phase]]):6.3f}" for phase in PHASES)
            worst = " ".join(f"{min(r for r, *_ in cells[phase]):5.2f}" for phase in PHASES)
            p50 = " ".join(f"{np.median([s for _, s, *_ in cells[phase]]) * 1000:7.2f}" for phase in PHASES)
            strategies = Counter(strategy for _, _, strategy, _ in cells["tuned"])
            carried = sorted({round(r, 3) for *_, r in cells["tuned"] if r is not None})
            lines.append(f"{spread:>7} {name + ' ' + placement:>19} {len(picked):>4}  {recall}   {worst}   {p50}  "
                         f"{dict(strategies)} {carried}")
    return lines


def _bound(max_distance: float | None) -> str:
    return "rest" if max_distance is None else f"≤{max_distance:.3f}"


def _print_tuning(tuned: dict) -> None:
    for kind, figures in tuned["kinds"].items():
        bands = "; ".join(
            f"{_bound(b['max_distance'])}: "
            f"{'exact' if b['min_ef_search'] == EXACT else b['min_ef_search'] or 'planned'}"
            f" (n={b['queries'] + b['exact']}, p50 {b['p50_ms']:.1f} ms"
            + (f", recall {b['recall']:.3f})" if b["recall"] is not None else ")")
            for b in figures["bands"])
        before, after = figures["before"], figures["after"]
        recall = f"{after['recall']:.3f}" if after["recall"] is not None else "-"
        print(f"  {kind}: {bands}")
        print(f"    sample: recall of index answers {before['recall']:.3f} → {recall} "
              f"(exact answers {before['exact']} → {after['exact']} of {before['queries'] + before['exact']}), "
              f"p50 {before['p50_ms']:.2f} → {after['p50_ms']:.2f} ms; plain SQL: {figures['sql']}")


if __name__ == "__main__":
    main()
