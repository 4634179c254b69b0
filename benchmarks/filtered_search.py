"""Filtered similarity search: completeness, recall@10 and latency, prodvec vs plain pgvector.

    python benchmarks/filtered_search.py [--rows 100000] [--small-rows 10000] [--queries 50]

A synthetic catalog: 512-d unit vectors from clusters (a shoe photo lies near other shoes,
with ~16 dimensions of within-cluster variation), 20 categories that follow the clusters
(10% of products carry another category), log-normal prices per category, half in stock.
Filters keep ~50% (10 categories), 5% (one category), 1% (+ a price cap) and 0.2% (+ in stock);
queries come from a cluster of the filtered category ("near") or of another one ("far").

Methods, each on the same queries: naive pgvector (default settings: ef_search 40, no
iterative scan), pgvector's iterative scan alone (relaxed_order, its defaults, re-sorted) and
prodvec's similar_to (Product.similar_to's call), hits loaded as Product objects, and
prodvec again once `prodvec category-indexes` has given each category with 1,000 products
its own HNSW index ("prodvec+cat"; the 50% filter spans ten categories, so it is unchanged
there). The plain pgvector queries run on prodvec's schema, so PostgreSQL may answer them
from the (category, price) index, which carries the vectors (migrations/0005), instead of
the HNSW index: exact then, when it does. p50 is also given for near and far queries apart:
with half of each, the overall p50 lies between the slowest of the one kind and the fastest
of the other.

Latency is compared with the unfiltered query run three ways: raw SQL over psycopg ('unf'),
a SQLAlchemy ORM query loading Products as a pgvector-python user writes it ('orm'), and
prodvec's API without a filter ('api'). All of them run for every query, in a random order
each time: on a shared 2-core machine the first query after another connection's is slower,
and a baseline timed in a loop of its own would look faster than it is. Truth: brute force in
numpy over the stored halfvec values, computed before any timing. prodvec reuses a filter's
planner estimate for 60 s; the run prints how many distinct filters each selectivity has.

Runs on a private embedded server (shared_buffers 512MB: the 100k table and its index fit),
loads with binary COPY, then builds the migrations' HNSW index (prodvec_hnsw_options(): m=32,
ef_construction=200) as `prodvec worker --once --bulk` does. About 3 minutes on 2 cores with
the defaults. At 1M rows (--rows 1000000 --small-rows 100000 --maintenance-work-mem 4GB) a run
took 28 minutes on 2 cores: COPY 20 s, HNSW build 828 s, the 20 category indexes ~15 minutes;
the table and its indexes then outgrow shared_buffers, and pages come from the OS cache.
"""
from __future__ import annotations

import os

# numpy's BLAS threads busy-wait after each brute-force answer, taking the 2 cores from the
# database being timed right after: one thread is as fast here and leaves timings alone.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg
import psycopg.sql
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session

from prodvec.db.connection import ensure_database, sqlalchemy_url, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.models import Product
from prodvec.search import plan, similar_to
from prodvec.worker.bulk import index_categories, rebuild_hnsw_index, vacuum_products

DIMENSIONS = 512
CATEGORIES = 20
CLUSTERS_PER_CATEGORY = 10
LATENT_DIMENSIONS = 16
K = 10
#: Recall tolerance: halfvec distances tie within this, and any of the tied rows is right.
TIE_TOLERANCE = 1e-4
SELECTIVITIES = ("50%", "5%", "1%", "0.2%")
#: prodvec category-indexes' default: categories with this many products get their own index.
CATEGORY_INDEX_MIN = 1000
#: Part of the database name, so a --pgdata kept from a run with other data is not reused.
DATA_VERSION = 3


@dataclass(frozen=True)
class Catalog:
    vectors: np.ndarray  # float16 rows, as stored (halfvec)
    category: np.ndarray  # int, 0..CATEGORIES-1
    cluster: np.ndarray
    price: np.ndarray  # float, 2 decimals
    in_stock: np.ndarray  # bool
    generator: Callable[[int, int], np.ndarray]  # (cluster, n) -> n fresh float32 vectors


def make_catalog(rows: int, seed: int) -> Catalog:
    rng = np.random.default_rng(seed)
    clusters = CATEGORIES * CLUSTERS_PER_CATEGORY
    cluster_category = np.repeat(np.arange(CATEGORIES), CLUSTERS_PER_CATEGORY)
    # Like CLIP image vectors: a shared component (unrelated photos still have cosine ~0.45),
    # then category (~0.7 within one), cluster (~0.85) and 16 directions of variation inside it.
    shared = _unit(rng.standard_normal(DIMENSIONS))
    category_dirs = _unit(rng.standard_normal((CATEGORIES, DIMENSIONS)))
    cluster_dirs = _unit(rng.standard_normal((clusters, DIMENSIONS)))
    centres = 0.65 * shared + 0.45 * category_dirs[cluster_category] + 0.40 * cluster_dirs
    bases = rng.standard_normal((clusters, LATENT_DIMENSIONS, DIMENSIONS)) / np.sqrt(LATENT_DIMENSIONS * DIMENSIONS)

    def generate(cluster: int, n: int, rng: np.random.Generator = rng) -> np.ndarray:
        latent = rng.standard_normal((n, LATENT_DIMENSIONS)) @ bases[cluster] * 0.35
        noise = rng.standard_normal((n, DIMENSIONS)) * (0.10 / np.sqrt(DIMENSIONS))
        return _unit(centres[cluster] + latent + noise).astype(np.float32)

    cluster = rng.integers(0, clusters, rows)
    vectors = np.empty((rows, DIMENSIONS), dtype=np.float16)
    for c in range(clusters):
        members = np.flatnonzero(cluster == c)
        vectors[members] = generate(c, len(members))
    category = cluster_category[cluster].copy()
    relabel = rng.random(rows) < 0.10
    category[relabel] = rng.integers(0, CATEGORIES, int(relabel.sum()))
    median = np.exp(rng.uniform(np.log(15), np.log(300), CATEGORIES))
    price = np.round(median[category] * rng.lognormal(0, 0.6, rows), 2).clip(0.5, 99_999)
    return Catalog(vectors, category, cluster, price, rng.random(rows) < 0.5, generate)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---- filters and queries ----------------------------------------------------------------------

@dataclass(frozen=True)
class Filter:
    categories: tuple[int, ...]
    max_price: float | None = None
    in_stock: bool = False

    def mask(self, catalog: Catalog) -> np.ndarray:
        keep = np.isin(catalog.category, self.categories)
        if self.max_price is not None:
            keep &= catalog.price <= self.max_price
        if self.in_stock:
            keep &= catalog.in_stock
        return keep

    def sql(self) -> tuple[str, dict[str, object]]:
        clauses, params = ["category = ANY(%(categories)s)"], {"categories": [f"c{c:02d}" for c in self.categories]}
        if self.max_price is not None:
            clauses.append("price <= %(max_price)s")
            params["max_price"] = Decimal(f"{self.max_price:.2f}")
        if self.in_stock:
            clauses.append("stock > 0")
        return " AND ".join(clauses), params

    def clauses(self) -> list:
        where = [Product.category.in_([f"c{c:02d}" for c in self.categories])]
        if self.max_price is not None:
            where.append(Product.price <= Decimal(f"{self.max_price:.2f}"))
        if self.in_stock:
            where.append(Product.stock > 0)
        return where


@dataclass(frozen=True)
class Case:
    selectivity: str
    placement: str  # near | far
    vector: np.ndarray
    filter: Filter


def make_cases(catalog: Catalog, per_cell: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed + 1)
    cases = []
    for selectivity in SELECTIVITIES:
        for placement in ("near", "far"):
            for _ in range(per_cell):
                wanted = _filter_for(selectivity, catalog, rng)
                others = tuple(set(range(CATEGORIES)) - set(wanted.categories))
                pool = wanted.categories if placement == "near" else others
                category = int(rng.choice(pool))
                cluster = category * CLUSTERS_PER_CATEGORY + int(rng.integers(CLUSTERS_PER_CATEGORY))
                cases.append(Case(selectivity, placement, catalog.generator(cluster, 1)[0], wanted))
    return cases


def _filter_for(selectivity: str, catalog: Catalog, rng: np.random.Generator) -> Filter:
    if selectivity == "50%":
        return Filter(tuple(int(c) for c in rng.choice(CATEGORIES, CATEGORIES // 2, replace=False)))
    category = int(rng.integers(CATEGORIES))
    prices = catalog.price[catalog.category == category]
    if selectivity == "5%":
        return Filter((category,))
    if selectivity == "1%":
        return Filter((category,), max_price=round(float(np.quantile(prices, 0.20)), 2))
    return Filter((category,), max_price=round(float(np.quantile(prices, 0.08)), 2), in_stock=True)


# ---- database ---------------------------------------------------------------------------------

def load(server_url: str, catalog: Catalog, name: str, maintenance_work_mem: str) -> str:
    """A database holding the catalog with its HNSW index; reused when already there."""
    url = with_dbname(server_url, name)
    ensure_database(server_url, name)
    upgrade(url, DIMENSIONS)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        if conn.execute("SELECT count(*) FROM products").fetchone()[0] == len(catalog.vectors):
            print(f"  {name}: already loaded")
            return url
        conn.execute("TRUNCATE products CASCADE")
        conn.execute("DROP INDEX IF EXISTS products_embedding_hnsw")
        started = time.perf_counter()
        with conn.cursor().copy(
            "COPY products (id, sku, title, category, price, stock, embedding) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "text", "text", "numeric", "int4", "halfvec"])
            for i, vector in enumerate(catalog.vectors):
                copy.write_row((
                    i + 1, f"SKU-{i:07d}", f"product {i}", f"c{catalog.category[i]:02d}",
                    Decimal(f"{catalog.price[i]:.2f}"), 10 if catalog.in_stock[i] else 0, HalfVector(vector),
                ))
        copied = time.perf_counter() - started
        built = rebuild_hnsw_index(url, maintenance_work_mem=maintenance_work_mem)
    vacuum_products(url)
    print(f"  {name}: COPY {len(catalog.vectors):,} rows {copied:.1f} s, HNSW build {built:.1f} s")
    return url


# ---- methods ----------------------------------------------------------------------------------

NAIVE = "SELECT id FROM products WHERE {where} ORDER BY embedding <=> %(q)s::halfvec LIMIT {k}"
ITERATIVE = (
    "WITH nearest AS MATERIALIZED (SELECT id, embedding <=> %(q)s::halfvec AS distance FROM products "
    "WHERE {where} ORDER BY distance LIMIT {k}) SELECT id FROM nearest ORDER BY distance"
)
UNFILTERED = "SELECT id FROM products ORDER BY embedding <=> %(q)s::halfvec LIMIT {k}"
#: The unfiltered query as raw SQL, as a SQLAlchemy ORM query and through prodvec's API.
BASELINES = ("raw", "orm", "api")


@dataclass
class Measured:
    ids: list[int]
    seconds: float
    strategy: str = ""


def run_sql(conn: psycopg.Connection, sql: str, case: Case, setup: str = "") -> Measured:
    where, params = case.filter.sql()
    params["q"] = HalfVector(case.vector)
    started = time.perf_counter()
    with conn.transaction():
        if setup:
            conn.execute(setup)
        ids = [row[0] for row in conn.execute(sql.format(where=where, k=K), params)]
    return Measured(ids, time.perf_counter() - started)


def run_orm(session: Session, vector: np.ndarray) -> Measured:
    """The unfiltered query as a SQLAlchemy user writes it with pgvector-python."""
    started = time.perf_counter()
    query = select(Product).order_by(Product.embedding.cosine_distance(HalfVector(vector))).limit(K)
    ids = [product.id for product in session.scalars(query)]
    session.rollback()
    elapsed = time.perf_counter() - started
    session.expunge_all()
    return Measured(ids, elapsed)


def run_prodvec(session: Session, vector: np.ndarray, where: list) -> Measured:
    started = time.perf_counter()
    result = similar_to(session, vector, k=K, where=where)
    ids = [hit.product.id for hit in result]
    session.rollback()
    elapsed = time.perf_counter() - started
    session.expunge_all()
    return Measured(ids, elapsed, result.strategy)


# ---- evaluation -------------------------------------------------------------------------------

def all_truths(catalog: Catalog, cases: list[Case]) -> list[tuple[set[int], int]]:
    """`truth` of every case, over the catalog's vectors as stored (unit length)."""
    stored = catalog.vectors.astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    return [truth(stored, case, catalog) for case in cases]


def truth(stored: np.ndarray, case: Case, catalog: Catalog) -> tuple[set[int], int]:
    """Ids (row number + 1, as loaded) within tolerance of the true top k, and how many must come back."""
    rows = np.flatnonzero(case.filter.mask(catalog))
    if len(rows) == 0:
        return set(), 0
    query = case.vector.astype(np.float16).astype(np.float32)
    distances = 1 - stored[rows] @ query / np.linalg.norm(query)
    need = min(K, len(rows))
    kth = np.partition(distances, need - 1)[need - 1]
    return {int(r) + 1 for r in rows[distances <= kth + TIE_TOLERANCE]}, need


@dataclass
class Cell:
    complete: list[bool]
    recall: list[float]
    seconds: list[float]
    placements: list[str]

    def add(self, measured: Measured, right: set[int], need: int, placement: str) -> None:
        self.complete.append(len(measured.ids) == need)
        found = len(set(measured.ids) & right)
        self.recall.append(min(found, need) / need if need else 1.0)
        self.seconds.append(measured.seconds)
        self.placements.append(placement)

    def seconds_of(self, placement: str) -> list[float]:
        return [s for s, where in zip(self.seconds, self.placements, strict=False) if where == placement]


def p(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000


def evaluate(
    url: str, catalog: Catalog, cases: list[Case], label: str, maintenance_work_mem: str
) -> dict[str, dict[str, Cell]]:
    # Every answer first: the brute force reads the whole catalog, which would leave the CPU
    # caches cold for whichever query ran right after it.
    truths = all_truths(catalog, cases)
    engine = create_engine(sqlalchemy_url(url))
    event.listen(engine, "connect", lambda dbapi_connection, _: register_vector(dbapi_connection))
    methods = ("naive", "iterative", "prodvec", "prodvec+cat")
    cells: dict[str, dict[str, Cell]] = {m: {} for m in methods}
    baselines: dict[str, list[float]] = {name: [] for name in BASELINES}
    strategies: dict[tuple[str, str], Counter[str]] = {}  # (method, selectivity) → prodvec's strategies
    with psycopg.connect(url, autocommit=True) as conn, Session(engine) as session:
        register_vector(conn)
        # The first phase runs without category indexes: a reused --pgdata may hold some (an
        # interrupted run, or `prodvec category-indexes` run on it by hand).
        drop_category_indexes = "SELECT count(*) FROM prodvec_index_categories(2147483647)"
        conn.execute(drop_category_indexes)

        def run_in_random_order(case: Case, methods: dict[str, Callable[[], Measured]]) -> dict[str, Measured]:
            # With the unfiltered query three ways beside each filtered one, in a random order:
            # the first query after another connection's runs slower, whichever it is.
            runs = {
                "raw": lambda: run_sql(conn, UNFILTERED, case),
                "orm": lambda: run_orm(session, case.vector),
                "api": lambda: run_prodvec(session, case.vector, []),
                **methods,
            }
            names = list(runs)
            order.shuffle(names)
            measured = {name: runs[name]() for name in names}
            for name in BASELINES:
                baselines[name].append(measured.pop(name).seconds)
            return measured

        def record(method: str, case: Case, measured: Measured, right: set[int], need: int) -> None:
            cells[method].setdefault(case.selectivity, Cell([], [], [], [])).add(measured, right, need, case.placement)
            if measured.strategy:  # prodvec's methods say how they searched
                strategies.setdefault((method, case.selectivity), Counter())[measured.strategy] += 1

        order = np.random.default_rng(0)
        for case in cases[:20]:  # warm caches and connections
            run_sql(conn, NAIVE, case)
            run_prodvec(session, case.vector, case.filter.clauses())
        for case, (right, need) in zip(cases, truths, strict=True):
            runs = run_in_random_order(case, {
                "naive": lambda case=case: run_sql(conn, NAIVE, case),
                "iterative": lambda case=case: run_sql(
                    conn, ITERATIVE, case, "SET LOCAL hnsw.iterative_scan = relaxed_order"),
                "prodvec": lambda case=case: run_prodvec(session, case.vector, case.filter.clauses()),
            })
            for method, measured in runs.items():
                record(method, case, measured, right, need)
        # The same queries again once categories have their own indexes (`prodvec category-indexes`).
        started = time.perf_counter()
        made = len(index_categories(url, min_products=CATEGORY_INDEX_MIN, maintenance_work_mem=maintenance_work_mem))
        print(f"  {made} per-category indexes (categories with >= {CATEGORY_INDEX_MIN} products) built in "
              f"{time.perf_counter() - started:.1f} s")
        plan.forget()
        for case in cases:  # warm again, every query once: the index builds took the caches
            run_prodvec(session, case.vector, case.filter.clauses())
        plan.forget()  # but no estimates from the warm-up: each filter's first query asks the planner
        for case, (right, need) in zip(cases, truths, strict=True):
            (measured,) = run_in_random_order(case, {
                "prodvec+cat": lambda case=case: run_prodvec(session, case.vector, case.filter.clauses()),
            }).values()
            record("prodvec+cat", case, measured, right, need)
        conn.execute(drop_category_indexes)  # dropped again: --pgdata reuse
        plan.forget()
    engine.dispose()
    raw, orm, api = (p(baselines[name], .5) for name in BASELINES)
    print(f"\n{label}: the unfiltered query, run beside every filtered one: p50 {raw:.2f} ms as raw SQL "
          f"('unf'), {orm:.2f} ms as a SQLAlchemy ORM query loading Products ('orm'), {api:.2f} ms through "
          f"prodvec's API ('api'). Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"shared_buffers {show(url, 'shared_buffers')}.")
    distinct = {key: len({c.filter for c in cases if c.selectivity == key}) for key in SELECTIVITIES}
    queries = {key: sum(c.selectivity == key for c in cases) for key in SELECTIVITIES}
    print("Distinct filters (prodvec reuses a filter's planner estimate for 60 s): "
          + ", ".join(f"{key} {n} of {queries[key]} queries" for key, n in distinct.items()))
    print(f"{'filter':>7} {'method':>10} {'complete':>9} {'recall@10':>10} {'min rec':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p50/unf':>8} {'p50/orm':>8} {'p50/api':>8} {'near p50':>9} {'far p50':>8}  "
          "prodvec strategies")
    for key in SELECTIVITIES:
        for method in methods:
            cell = cells[method][key]
            note = ", ".join(f"{s} {n}" for s, n in sorted(strategies.get((method, key), Counter()).items()))
            if method == "prodvec+cat" and (not made or key == "50%"):
                note += " (no category index applies: as prodvec)"
            p50 = p(cell.seconds, .5)
            print(f"{key:>7} {method:>10} {100 * np.mean(cell.complete):8.0f}% {np.mean(cell.recall):10.3f} "
                  f"{min(cell.recall):8.2f} {p50:8.2f} {p(cell.seconds, .95):8.2f} {p50 / raw:7.1f}x "
                  f"{p50 / orm:7.1f}x {p50 / api:7.1f}x {p(cell.seconds_of('near'), .5):9.2f} "
                  f"{p(cell.seconds_of('far'), .5):8.2f}  {note}")
    cells["unfiltered"] = {"all": Cell([], [], baselines["raw"], [])}
    return cells


def configure(server: str, pgdata: Path, shared_buffers: str) -> str:
    """Set shared_buffers (restarting the server when it changes); returns the server's URL."""
    with psycopg.connect(server, autocommit=True) as conn:
        if conn.execute("SHOW shared_buffers").fetchone()[0] == shared_buffers:
            return server
        statement = psycopg.sql.SQL("ALTER SYSTEM SET shared_buffers = {}")
        conn.execute(statement.format(psycopg.sql.Literal(shared_buffers)))
    stop_server(pgdata)
    return ensure_server(pgdata)


def show(url: str, setting: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute(psycopg.sql.SQL("SHOW {}").format(psycopg.sql.Identifier(setting))).fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-rows", type=int, default=10_000, help="also run at this size, for growth (0: skip)")
    parser.add_argument("--queries", type=int, default=50, help="queries per filter and near/far (default 50)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pgdata", type=Path, help="keep the server and databases here (reused when rerun)")
    parser.add_argument(
        "--shared-buffers", default="512MB",
        help="the server's shared_buffers (default 512MB: 100k rows and their index take ~250 MB; "
        "PostgreSQL's own default, 128MB, makes every method read pages from the OS cache)",
    )
    parser.add_argument(
        "--maintenance-work-mem", default="1GB",
        help="for the index builds (default 1GB; a graph that outgrows it builds far slower: at 1M "
        "rows give it 4GB)",
    )
    args = parser.parse_args()

    pgdata = args.pgdata or Path(tempfile.mkdtemp(prefix="prodvec-bench-")) / "pgdata"
    server = configure(ensure_server(pgdata), pgdata, args.shared_buffers)
    started = time.perf_counter()
    results = {}
    try:
        for rows in [r for r in (args.small_rows, args.rows) if r]:
            catalog = make_catalog(rows, args.seed)
            name = f"bench_v{DATA_VERSION}_{rows}_{args.seed}"
            url = load(server, catalog, name, args.maintenance_work_mem)
            cases = make_cases(catalog, args.queries, args.seed)
            results[rows] = evaluate(url, catalog, cases, f"{rows:,} rows, {len(cases)} queries, k={K}",
                                     args.maintenance_work_mem)
    finally:
        if args.pgdata is None:
            stop_server(pgdata)
            shutil.rmtree(pgdata.parent, ignore_errors=True)
    if len(results) == 2:
        small, large = sorted(results)
        print(f"\nlatency growth {small:,} → {large:,} rows (p50 ms)")
        for method in ("naive", "iterative", "prodvec", "prodvec+cat"):
            growth = "  ".join(
                f"{key} {p(results[small][method][key].seconds, .5):.2f}"
                f"→{p(results[large][method][key].seconds, .5):.2f}"
                for key in SELECTIVITIES
            )
            print(f"  {method:>10}: {growth}")
        unf = results[small]["unfiltered"]["all"].seconds, results[large]["unfiltered"]["all"].seconds
        print(f"  {'unfiltered':>10}: {p(unf[0], .5):.2f}→{p(unf[1], .5):.2f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
