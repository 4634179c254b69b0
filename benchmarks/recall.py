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
of two products of different categories. Filters: none, a price range keeping half the
catalog (an iterative scan), one category under its median price (~2.5%: a quick look).
Truth: numpy brute force over the stored halfvec values. Each query runs through
Product.similar_to's path (prodvec.search.similar_to) before tuning (as planned) and after
(the stored effort); the tuning's and a re-measurement's time are the "measuring time".
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
        for i in range(per_cell):  # far: turned away, or two categories mixed
            row = int(rng.integers(rows))
            if i % 2:
                away = rng.standard_normal(stored.shape[1]).astype(np.float32)
                away -= (away @ stored[row]) * stored[row]
                cosine = rng.uniform(0.1, 0.6)
                vector = cosine * stored[row] + np.sqrt(1 - cosine**2) * _unit(away)
            else:
                other = int(rng.choice(np.flatnonzero(catalog.category != catalog.category[row])))
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
    print(f"{'catalog':>7} {'filter':>14} {'queries':>7} {'recall before':>13} {'after':>6} {'min before':>10} "
          f"{'after':>6} {'p50 ms before':>13} {'after':>6}  strategies after / recall figure carried")
    for line in lines:
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def evaluate(url: str, spread: str, catalog: Catalog, args: argparse.Namespace) -> list[str]:
    stored = _unit(catalog.vectors.astype(np.float32))
    low, high = (float(x) for x in np.quantile(catalog.price, [0.25, 0.75]))
    low, high = round(low, 2), round(high, 2)
    queries = make_queries(catalog, args.queries, args.seed)
    kths = [truth_kth(stored, q, mask(q, catalog, low, high)) for q in queries]
    del stored
    engine = create_engine(sqlalchemy_url(url))
    lines = []
    with Session(engine) as session:
        session.execute(text("DELETE FROM prodvec_recall_settings"))  # a kept --pgdata: start untuned
        session.commit()
        plan.forget()
        run_queries(session, catalog, queries[:20], kths[:20], low, high)  # warm up
        before = run_queries(session, catalog, queries, kths, low, high)
        timer = time.perf_counter()
        tuned = tune_recall(session, Options(per_case=args.per_case, seconds=900, seed=args.seed), args.target)
        tune_seconds = time.perf_counter() - timer
        timer = time.perf_counter()
        measured = measure_recall(session, Options(per_case=args.per_case, seconds=900, seed=args.seed + 1))
        measure_seconds = time.perf_counter() - timer
        plan.forget()
        run_queries(session, catalog, queries[:20], kths[:20], low, high)
        after = run_queries(session, catalog, queries, kths, low, high)
    engine.dispose()
    print(f"\n{spread}: tuning {tune_seconds:.0f} s ({tuned['queries']} queries), re-measuring "
          f"{measure_seconds:.0f} s ({measured['queries']} queries)")
    for kind, figures in tuned["kinds"].items():
        bands = ", ".join(f"≤{b['max_distance']:.3f}" if b["max_distance"] is not None else "rest"
                          for b in figures["bands"])
        efforts = ", ".join(str(b["min_ef_search"] or "planned") for b in figures["bands"])
        print(f"  {kind}: bands {bands}; ef_search {efforts}; sample recall {figures['before']['recall']:.3f} → "
              f"{figures['after']['recall']:.3f}, p50 {figures['before']['p50_ms']:.2f} → "
              f"{figures['after']['p50_ms']:.2f} ms; plain SQL: {figures['sql']}")
    for kind, figures in measured["kinds"].items():
        print(f"  re-measured {kind}: recall {figures['recall']:.3f} (worst decile {figures['worst_decile']:.3f})")
    for name in FILTERS:
        for placement in ("near", "far"):
            picked = [i for i, q in enumerate(queries) if q.filter == name and q.placement == placement]
            b = [before[i] for i in picked]
            a = [after[i] for i in picked]
            strategies = Counter(s for _, _, s, _ in a)
            figures = sorted({round(r, 3) for _, _, _, r in a if r is not None})
            lines.append(
                f"{spread:>7} {name + ' ' + placement:>14} {len(picked):>7} {np.mean([r for r, *_ in b]):13.3f} "
                f"{np.mean([r for r, *_ in a]):6.3f} {min(r for r, *_ in b):10.2f} {min(r for r, *_ in a):6.2f} "
                f"{np.median([s for _, s, *_ in b]) * 1000:13.2f} {np.median([s for _, s, *_ in a]) * 1000:6.2f}  "
                f"{dict(strategies)} {figures}")
    return lines


if __name__ == "__main__":
    main()
