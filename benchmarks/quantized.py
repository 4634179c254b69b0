"""Binary-code index with exact re-rank beside today's halfvec HNSW index, on the same data.

    python benchmarks/quantized.py [--rows 100000] [--queries 50] [--candidates 100,200,400,800]

Data and filtered queries: benchmarks/filtered_search.py's clustered 512-d catalog (CLIP-like:
a large component shared by every vector, so the vectors are far from centred), loaded with
its loader, which builds the halfvec index as `prodvec worker --once --bulk` does (m 32,
ef_construction 200). Unfiltered queries: "near" ones drawn from a catalog cluster (their
nearest products at cosine ~0.85), "far" ones random directions (nearest at cosine ~0.2).
Real photos instead (benchmarks/fashion_catalog.py): `--fashion-features`, the offline
encoder's 1280-d features of Fashion-MNIST's 70,000 photos, with filtered cases of the same four
selectivities; or `--fashion-pixels`, raw pixels, unfiltered only.

Reported, each on the same queries, truth by numpy brute force over the stored halfvec values:
- build time and size of the halfvec index and of the binary-code index, codes taken from the
  raw vectors ("bit raw") and from the vectors minus the catalog mean ("bit centred");
- opt-in (`--variants ...,sub128,pca128`): the other quantisation pgvector can index, an HNSW index
  on a lower-dimensional halfvec searched in the same two-stage shape (benchmarks/projection_index.py:
  "sub D" the first D dimensions, "pca D" the top D principal components), with the code index's
  m and ef_construction; their queries run in one random order with the first code index's;
- unfiltered recall@10 and p50/p95 of plain SQL: the halfvec index (prodvec's unfiltered
  setting, ef_search 40, and ef_search 100) and the two-stage query at each candidate count;
- recall@10 and p50/p95 of Product.similar_to, unfiltered and filtered (filtered_search.py's four
  selectivities, near and far), which keeps its exact fallback: through the code index as
  planned, after `--tune TARGET` (`prodvec recall --tune`), and without the code index.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as filtered_search.py: BLAS threads steal the cores

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import fashion_catalog
import filtered_search
import numpy as np
import psycopg
import quantized_search
from filtered_search import (
    DATA_VERSION,
    DIMENSIONS,
    Case,
    Catalog,
    K,
    configure,
    load,
    make_cases,
    make_catalog,
)
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from projection_index import Projector, build_projection, drop_projections, parse, two_stage_sql

from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.quantized_index import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    create_index,
    drop_index,
    index_bytes,
)
from prodvec.search import quantized
from prodvec.worker.bulk import rebuild_hnsw_index

HALFVEC = "SELECT id FROM products ORDER BY embedding <=> %(q)s LIMIT {k}"
#: The two-stage query as a plain SQL user writes it (the README's).
TWO_STAGE = (
    "SELECT id FROM (SELECT id, embedding FROM products "
    "ORDER BY prodvec_binary_code(embedding)::bit({d}) <~> prodvec_binary_code(%(q)s)::bit({d}) "
    "LIMIT {candidates}) candidates ORDER BY embedding <=> %(q)s LIMIT {k}"
)


def unfiltered_queries(catalog: Catalog, per_kind: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed + 2)
    clusters = int(catalog.cluster.max()) + 1
    near = [catalog.generator(int(rng.integers(clusters)), 1)[0] for _ in range(per_kind)]
    far = rng.standard_normal((per_kind, DIMENSIONS))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    return [("near", v) for v in near] + [("far", v.astype(np.float32)) for v in far]


def top_k(stored: np.ndarray, vector: np.ndarray, k: int = K) -> tuple[set[int], float]:
    """Ids (row + 1) within halfvec ties of the true top k, and the top hit's cosine."""
    query = vector.astype(np.float16).astype(np.float32)
    similarity = stored @ (query / np.linalg.norm(query))
    kth = np.partition(-similarity, k - 1)[k - 1]
    return {int(r) + 1 for r in np.flatnonzero(-similarity <= kth + 1e-4)}, float(similarity.max())


def timed_sql(conn: psycopg.Connection, sql: str, params: dict[str, HalfVector], ef_search: int
              ) -> tuple[list[int], float]:
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search),))
        ids = [row[0] for row in conn.execute(sql, params)]
    return ids, time.perf_counter() - started


def unfiltered(url: str, stored: np.ndarray, queries: list[tuple[str, np.ndarray]], methods: dict[str, tuple[str, int]],
               projectors: list[Projector] | None = None,
               ) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per method and near/far: recalls and seconds; every method runs for every query, in a random order.
    The query vector is %(q)s; ``projectors`` add its projections' parameters."""
    truths = [top_k(stored, vector) for _, vector in queries]
    near, far = (np.mean([best for (kind, _), (_, best) in zip(queries, truths, strict=True) if kind == wanted])
                 for wanted in ("near", "far"))
    print(f"  unfiltered truth: top-1 cosine near {near:.2f}, far {far:.2f}")
    results: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        m: {"near": ([], []), "far": ([], [])} for m in methods}
    order = np.random.default_rng(0)

    def params(vector: np.ndarray) -> dict[str, HalfVector]:
        return {"q": HalfVector(vector), **{k: v for project in projectors or [] for k, v in project(vector).items()}}

    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        for _, vector in queries[:20]:  # warm caches
            for sql, ef in methods.values():
                timed_sql(conn, sql, params(vector), ef)
        for (kind, vector), (right, _) in zip(queries, truths, strict=True):
            names = list(methods)
            order.shuffle(names)
            for name in names:
                sql, ef = methods[name]
                ids, seconds = timed_sql(conn, sql, params(vector), ef)
                results[name][kind][0].append(len(set(ids) & right) / K)
                results[name][kind][1].append(seconds)
    return results


def has_halfvec_index(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('products_embedding_hnsw') IS NOT NULL").fetchone()[0]


def record_halfvec_build(url: str, seconds: float) -> None:
    """Keep the halfvec build's time on the index itself, so that a rerun on the same --pgdata
    (after an interruption) can report it instead of rebuilding for many minutes at 1M rows."""
    note = f"{seconds:.1f} s; load average {' / '.join(f'{a:.1f}' for a in os.getloadavg())} at its end; " + \
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with psycopg.connect(url, autocommit=True) as conn:
        comment = psycopg.sql.SQL("COMMENT ON INDEX products_embedding_hnsw IS {}")
        conn.execute(comment.format(psycopg.sql.Literal(note)))


def recorded_halfvec_build(url: str) -> tuple[float, str] | None:
    """(seconds, note) of the halfvec build an earlier run recorded, if the index is still that one."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT obj_description(to_regclass('products_embedding_hnsw'), 'pg_class')").fetchone()
    note = row[0] if row else None
    return (float(note.split(" s;")[0]), note) if note else None


def report_unfiltered(results: dict[str, dict[str, tuple[list[float], list[float]]]], per_kind: int) -> None:
    print(f"\nunfiltered, plain SQL ({per_kind} near, {per_kind} far queries)")
    for name, kinds in results.items():
        print(f"  {name:>18}  near: {quantized_search.summary(*kinds['near'])}   "
              f"far: {quantized_search.summary(*kinds['far'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50, help="per kind: near, far (and per filter cell)")
    parser.add_argument("--candidates", default="100,200,400,800", help="re-ranked candidate counts to measure")
    parser.add_argument("--variants", default="raw,centred",
                        help="binary codes of the raw and/or centred vectors; opt-in lower-dimensional halfvec "
                             "indexes: subD (the first D dimensions), pcaD (the top D principal components)")
    parser.add_argument("--m", type=int, default=DEFAULT_M, help="the code graph's m")
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--filtered", action=argparse.BooleanOptionalAction, default=True,
                        help="also time Product.similar_to's filtered searches with and without the code index")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--fashion-features", action="store_true",
                      help="real image features instead: the offline encoder's vectors of Fashion-MNIST's 70,000 "
                           "photos (apt-get install dataset-fashion-mnist; encoded once by "
                           "benchmarks/fashion_features.py and cached, ~40 min on 2 cores); --rows is ignored")
    data.add_argument("--fashion-pixels", action="store_true",
                      help="real photos instead: Fashion-MNIST's 60,000 training photos as raw-pixel vectors "
                           "(apt-get install dataset-fashion-mnist); --rows is ignored")
    parser.add_argument("--tune", type=float, metavar="TARGET",
                        help="also run `prodvec recall --tune --target TARGET` with the code index and time "
                             "Product.similar_to again with the candidates it chose")
    parser.add_argument("--tune-queries", type=int, default=30, help="--tune: sampled queries per filter")
    parser.add_argument("--tune-seconds", type=float, default=900.0, help="--tune: time bound")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pgdata", type=Path, help="keep the server and databases here (reused when rerun)")
    parser.add_argument("--shared-buffers", default="512MB")
    parser.add_argument("--maintenance-work-mem", default="1GB")
    parser.add_argument("--time-halfvec-build", action=argparse.BooleanOptionalAction, default=True,
                        help="rebuild the halfvec index to time it when a reused --pgdata has it already "
                             "and no earlier run recorded its build time (on the index's comment)")
    args = parser.parse_args()
    candidate_counts = [int(c) for c in args.candidates.split(",")]
    variants = args.variants.split(",")
    code_variants = [v for v in variants if v in ("raw", "centred")]
    projections = [v for v in variants if parse(v)]
    if len(code_variants) + len(projections) != len(variants):
        parser.error(f"--variants: each of raw, centred, subD, pcaD, not {args.variants!r}")

    pgdata = args.pgdata or Path(tempfile.mkdtemp(prefix="prodvec-quantized-")) / "pgdata"
    server = configure(ensure_server(pgdata), pgdata, args.shared_buffers)
    started = time.perf_counter()
    try:
        cases: list[Case] = []
        if args.fashion_features:
            catalog, queries, cases = fashion_catalog.features(args.queries, args.queries // 2 or 1, args.seed)
            name, dimensions = f"fashion_features_v1_{args.queries}_{args.seed}", catalog.vectors.shape[1]
            filtered_search.DIMENSIONS = dimensions  # the loader sizes the embedding column by it
        elif args.fashion_pixels:
            catalog, queries = fashion_catalog.pixels(args.queries, args.seed)
            name, dimensions = "fashion_pixels_v1", catalog.vectors.shape[1]
            filtered_search.DIMENSIONS = dimensions  # the loader sizes the embedding column by it
            args.filtered = False  # its filters and queries come from the synthetic clusters
        else:
            catalog = make_catalog(args.rows, args.seed)
            queries = unfiltered_queries(catalog, args.queries, args.seed)
            name, dimensions = f"bench_v{DATA_VERSION}_{args.rows}_{args.seed}", DIMENSIONS
        # The loader's own halfvec build, timed (it returns its seconds): no second build needed.
        loader_builds: list[float] = []

        def timed_build(url: str, **options: str) -> float:
            loader_builds.append(rebuild_hnsw_index(url, **options))
            record_halfvec_build(url, loader_builds[-1])
            print(f"  halfvec: built in {loader_builds[-1]:.1f} s", flush=True)
            return loader_builds[-1]

        filtered_search.rebuild_hnsw_index = timed_build
        url = load(server, catalog, name, args.maintenance_work_mem)
        drop_index(url)
        builds: dict[str, tuple[float, int | None]] = {"halfvec": (loader_builds[0], None)} if loader_builds else {}
        earlier = recorded_halfvec_build(url) if not loader_builds and has_halfvec_index(url) else None
        if earlier:  # a rerun on a kept --pgdata: the build was timed by the run that made it
            builds["halfvec"] = (earlier[0], None)
            print(f"  halfvec: index kept from an earlier run, which built it in {earlier[1]}", flush=True)
        stored = catalog.vectors.astype(np.float32)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
        per_cell = args.queries // 2 or 1
        if args.filtered and not cases:
            cases = make_cases(catalog, per_cell, args.seed)
        elif not args.filtered:
            cases = []
        results: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        halfvec_methods = {"halfvec ef 40": (HALFVEC.format(k=K), 40), "halfvec ef 100": (HALFVEC.format(k=K), 100)}

        # The halfvec index first when it is there (a fresh load built it), its queries run
        # beside the codes' in one random order; else the codes first: at 1M rows on a busy
        # machine the halfvec build may not finish in the time there is.
        halfvec_ready = has_halfvec_index(url) and not (args.time_halfvec_build and "halfvec" not in builds)
        # The projections' indexes first, kept while the first code index is measured: all their
        # queries run in one random order with the halfvec and code index's.
        drop_projections(url, projections)
        projected_methods: dict[str, tuple[str, int]] = {}
        projectors: list[Projector] = []
        for variant in projections:
            label = f"{variant[:3]} {variant[3:]}"
            seconds, size, projection = build_projection(url, variant, stored, args.m, args.ef_construction,
                                                         args.maintenance_work_mem)
            builds[label] = (seconds, size)
            projectors += [projection] if projection else []
            print(f"  {label}: built in {seconds:.1f} s, {size / 2**20:.1f} MB; load average "
                  f"{' / '.join(f'{a:.1f}' for a in os.getloadavg())}", flush=True)
            projected_methods.update({f"{label} {c}": (two_stage_sql(variant, c, K), min(c, 1000))
                                      for c in candidate_counts})
        if projected_methods and not code_variants:
            extra = halfvec_methods if halfvec_ready else {}
            measured = unfiltered(url, stored, queries, {**extra, **projected_methods}, projectors)
            report_unfiltered(measured, args.queries)
            results.update(measured)
        for centred in [variant == "centred" for variant in code_variants]:
            label = "bit centred" if centred else "bit raw"
            t0 = time.perf_counter()
            made = create_index(url, centred=centred, m=args.m, ef_construction=args.ef_construction,
                                maintenance_work_mem=args.maintenance_work_mem)
            builds[label] = (time.perf_counter() - t0, index_bytes(url))
            print(f"  {label}: built in {builds[label][0]:.1f} s, {builds[label][1] / 2**20:.1f} MB "
                  f"(mean length {made['mean_norm']:.2f}); load average "
                  f"{' / '.join(f'{a:.1f}' for a in os.getloadavg())}", flush=True)
            two_stage = {f"{label} {c}": (TWO_STAGE.format(d=dimensions, candidates=c, k=K), min(c, 1000))
                         for c in candidate_counts}
            first = not any(name.startswith("bit") for name in results)
            extra = {**(halfvec_methods if halfvec_ready and "halfvec ef 40" not in results else {}),
                     **(projected_methods if first else {})}
            measured = unfiltered(url, stored, queries, {**extra, **two_stage}, projectors)
            report_unfiltered(measured, args.queries)
            results.update(measured)
        drop_projections(url, projections)
        # Through Product.similar_to: the last code index as planned, then tuned; later without it.
        truths = [top_k(stored, vector)[0] for _, vector in queries]
        api: dict[str, quantized_search.Cells] = {}
        if code_variants:
            api["codes"] = {**quantized_search.unfiltered(url, queries, truths),
                            **(quantized_search.filtered(url, catalog, cases) if args.filtered else {})}
            quantized_search.report("Product.similar_to, the code index as planned", api, per_cell)
        if code_variants and args.tune:
            quantized_search.tune(url, args.tune, args.tune_queries, args.tune_seconds)
            api["codes tuned"] = {**quantized_search.unfiltered(url, queries, truths),
                                  **(quantized_search.filtered(url, catalog, cases) if args.filtered else {})}
            quantized_search.report("Product.similar_to, the code index tuned", {"codes tuned": api["codes tuned"]},
                                    per_cell)
        drop_index(url)
        if not halfvec_ready:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP INDEX IF EXISTS products_embedding_hnsw")
            print("  building the halfvec index ...", flush=True)
            builds["halfvec"] = (rebuild_hnsw_index(url, maintenance_work_mem=args.maintenance_work_mem), None)
            record_halfvec_build(url, builds["halfvec"][0])
            print(f"  halfvec: built in {builds['halfvec'][0]:.1f} s", flush=True)
            measured = unfiltered(url, stored, queries, halfvec_methods)
            report_unfiltered(measured, args.queries)
            results.update(measured)
        with psycopg.connect(url) as conn:
            halfvec_bytes = conn.execute("SELECT pg_relation_size('products_embedding_hnsw')").fetchone()[0]
        builds["halfvec"] = (builds.get("halfvec", (float("nan"), None))[0], halfvec_bytes)
        del stored
        api["halfvec"] = {**quantized_search.unfiltered(url, queries, truths),
                          **(quantized_search.filtered(url, catalog, cases) if args.filtered else {})}

        print(f"\n{len(catalog.vectors):,} rows, {dimensions}-d, k={K}; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        print(f"{'index':>12} {'build s':>8} {'MB':>8}")
        for name, (seconds, size) in builds.items():
            print(f"{name:>12} {seconds:8.1f} {(size or 0) / 2**20:8.1f}")
        report_unfiltered(results, args.queries)
        quantized_search.report(f"Product.similar_to: 'codes' the code index with {quantized.CANDIDATES_PER_HIT} × k "
                                f"candidates, 'codes tuned' as `prodvec recall --tune` chose, 'halfvec' without it",
                                api, per_cell)
    finally:
        if args.pgdata is None:
            stop_server(pgdata)
            shutil.rmtree(pgdata.parent, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
