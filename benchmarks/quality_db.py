"""Do benchmarks/quality.py's in-memory quality figures hold end to end, through the database?

    python benchmarks/quality_db.py [--catalog 2000] [--per-fault 30] [--held-out 100]

quality.py scores embeddings in memory (exact cosine over float32 vectors). This takes the product's
path, for PRODVEC_CATALOG_VIEWS=single and =multi with robust queries: catalog photos written to disk
(PNG), inserted into a fresh embedded PostgreSQL (temp PRODVEC_HOME, stopped at the end), embedded
into halfvec columns by prodvec.worker.pipeline.Worker.run(once=True), searched by
prodvec.evaluate.evaluate (what `prodvec eval` runs) with query photos loaded from disk. It prints
near-duplicate recall@1 per fault, their average and worst, and category precision@10, beside
quality.md's figures (2,000 products, 200 near-duplicates, 500 held-out) and the in-memory figures
for exactly the photos used here: quality.py's own (its Bench: catalog draw, fault seeds, test split).
Its whole query set would add ~30 min of encoding on 2 busy CPU cores (both policies, 4 views each),
so by default: all 2,000 products, --per-fault of its 200 near-duplicates (evenly spread), its first
--held-out queries (--catalog N: its first N products, and near-duplicates among them); the in-memory
column is recomputed for that subset from quality.py's cached embeddings (run it once first), so it
compares like with like. `--per-fault 200 --held-out 500` is quality.py's size. The defaults took 13 min
(load average 3.6 on 2 cores; --catalog 1000: 7 min).

Two database columns: as planned (an unfiltered search over up to 2,000 products is an exact pass
over the halfvec vectors, prodvec/search/plan.py), and with the HNSW index forced (EXACT_MAX_ROWS=0:
a larger catalog's path), which reuses the first pass's query encodes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from quality import CATEGORIES, HERE, MULTI, TODAY, Bench, Config, Setup, faults

from prodvec import session
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.encode import Encoder, load_encoder, robust, spec_dimensions
from prodvec.evaluate import LabelledQuery, evaluate
from prodvec.images import views
from prodvec.images.views import ViewPolicy
from prodvec.search import plan
from prodvec.worker.pipeline import Worker

MODEL = "timm:efficientnet_lite0"
FAULTS = ("clean", *faults.PERTURBATIONS)
ROWS = (*FAULTS, "average", "worst", "precision@10")
POLICIES = {"single": TODAY, "multi": MULTI}  # PRODVEC_CATALOG_VIEWS → quality.py's configuration


class CachedBench(Bench):
    """quality.py's photos and cached embeddings; never encodes (that would take hours here)."""

    def _view(self, photos, view, shown):
        def missing():
            raise SystemExit(f"quality.py's embeddings of {photos} / {view} are not cached in "
                             f"{self.setup.cache}: run `python benchmarks/quality.py` first")
        return super()._view(photos, view, missing)


def summary(recall: dict[str, float], precision: float) -> dict[str, float]:
    broken = [recall[name] for name in FAULTS[1:]]
    return {**recall, "average": float(np.mean(broken)), "worst": min(broken), "precision@10": precision}


def in_memory(bench: Bench, config: Config, n: int, held: int, picks: np.ndarray) -> dict[str, float]:
    """quality.py's Bench.scores, on the first n products, first `held` held-out queries, `picks` near-duplicates."""
    catalog = bench._catalog(config)[:n]
    vectors = bench._queries(config, "held-out", None)[:held]
    order = np.argsort(views.fused_distances(vectors, catalog, config.policy), axis=1, kind="stable")[:, :10]
    same = bench.train_labels[bench.catalog_ids[:n]][order] == bench.test_labels[bench.query_ids[:held]][:, None]
    recall = {}
    for name in FAULTS:
        nearest = views.fused_distances(bench._queries(config, name, None)[picks], catalog, config.policy).argmin(1)
        recall[name] = float(np.mean(nearest == bench.dup_positions[picks]))
    return summary(recall, float(same.mean()))


def published(path: Path) -> dict[str, dict[str, float]]:
    """quality.md's 'Plain vs robust' table: {'single': robust today, 'multi': multi-view} per row."""
    found: dict[str, dict[str, float]] = {"single": {}, "multi": {}}
    names = {"average": "average", "worst": "worst", "category precision": "precision@10"}
    for line in path.read_text().split("## Plain vs robust")[1].split("##")[0].splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1][:1].isdigit():
            continue
        row = next((v for k, v in names.items() if cells[0].startswith(k)), cells[0])
        found["single"][row], found["multi"][row] = float(cells[2]), float(cells[3])
    return found


def dup(bench: Bench, fault: str, position: int):
    """A near-duplicate query photo, as quality.py's Bench._near_dup_photos makes it."""
    photo = bench.catalog_photos[position]
    return photo if fault == "clean" else faults.perturb(photo, fault, seed=position)


def save(photo, path: Path) -> str:
    photo.save(path, compress_level=1)  # PNG: lossless, the very pixels quality.py encodes
    return str(path)


def memoize_query_encodes() -> None:
    """Query photos encode to the same vectors every time: let the forced-index pass reuse them."""
    encode, memo = robust.encode_queries, {}

    def encode_queries(encoder, images, **options):
        key = (repr(sorted(options.items())), *(hashlib.sha1(i.tobytes()).digest() for i in images))
        if key not in memo:
            memo[key] = encode(encoder, images, **options)
        return memo[key]
    robust.encode_queries = encode_queries  # prodvec/search/query.py imports it at each call


def scores(url: str, held_out: list[LabelledQuery], near_dups: dict[str, list[LabelledQuery]], encoder: Encoder,
           policy: ViewPolicy) -> dict[str, float]:
    with session(url) as db:
        precision = evaluate(db, held_out, k=10, robust=True, encoder=encoder, policy=policy).scores["precision@10"]
        recall = {name: evaluate(db, queries, k=10, robust=True, encoder=encoder, policy=policy).scores["recall@1"]
                  for name, queries in near_dups.items()}
    return summary(recall, precision)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=int, default=2000, help="first N of quality.py's 2,000 products [2000]")
    parser.add_argument("--per-fault", type=int, default=30, help="near-duplicates per fault, of its 200 [30]")
    parser.add_argument("--held-out", type=int, default=100, help="held-out queries, of its 500 [100]")
    args = parser.parse_args()
    started = time.perf_counter()
    encoder = load_encoder(MODEL, "cpu")
    bench = CachedBench(Setup(MODEL, 448, 2000, 500, 200, "test", HERE / "results"), encoder)
    n, held = min(args.catalog, 2000), min(args.held_out, 500)
    inside = np.flatnonzero(bench.dup_positions < n)  # quality.py's near-duplicates within this catalog
    picks = np.unique(inside[np.linspace(0, len(inside) - 1, min(args.per_fault, len(inside))).round().astype(int)])
    reference = {policy: in_memory(bench, config, n, held, picks) for policy, config in POLICIES.items()}
    paper = published(HERE / "quality.md")
    skus = [f"FM{i:05d}" for i in bench.catalog_ids[:n]]
    results: dict[str, dict[str, dict[str, float]]] = {}
    timing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="prodvec-quality-db-") as tmp:
        home, photos = Path(tmp), Path(tmp) / "photos"
        photos.mkdir()
        images = [save(bench.catalog_photos[i], photos / f"{sku}.png") for i, sku in enumerate(skus)]
        categories = [CATEGORIES[label] for label in bench.train_labels[bench.catalog_ids[:n]]]
        held_out = [LabelledQuery(i + 2, save(bench.query_photos[i], photos / f"held-{i}.png"), None,
                                  CATEGORIES[bench.test_labels[bench.query_ids[i]]]) for i in range(held)]
        near_dups = {name: [LabelledQuery(line, save(dup(bench, name, int(bench.dup_positions[j])),
                                                     photos / f"{name}-{j}.png"), skus[bench.dup_positions[j]], None)
                            for line, j in enumerate(picks, start=2)] for name in FAULTS}
        print(f"{n} products, {len(picks)} near-duplicates per fault, {held} held-out queries; photos written "
              f"at {time.perf_counter() - started:.0f} s", flush=True)
        memoize_query_encodes()
        server = ensure_server(home / "pgdata")
        try:
            for policy, config in POLICIES.items():
                ensure_database(server, policy)
                url = with_dbname(server, policy)
                upgrade(url, spec_dimensions(encoder.spec))
                with connect(url, autocommit=True) as conn:
                    conn.execute("INSERT INTO products (sku, title, category, image) SELECT * FROM "
                                 "unnest(%s::text[], %s::text[], %s::text[], %s::text[])",
                                 (skus, categories, categories, images))
                clock = time.perf_counter()
                stats = Worker(url, encoder, policy=config.policy).run(once=True)
                if stats.embedded != n:
                    raise SystemExit(f"worker: {stats.summary()} (expected {n})")
                embed = time.perf_counter() - clock
                with connect(url, autocommit=True) as conn:
                    conn.execute("ANALYZE products")  # as autovacuum would: the planner's row count
                clock = time.perf_counter()
                planned = scores(url, held_out, near_dups, encoder, config.policy)
                searched = time.perf_counter() - clock
                clock, exact_max, plan.EXACT_MAX_ROWS = time.perf_counter(), plan.EXACT_MAX_ROWS, 0
                try:
                    forced = scores(url, held_out, near_dups, encoder, config.policy)
                finally:
                    plan.EXACT_MAX_ROWS = exact_max
                results[policy] = {"db": planned, "hnsw": forced}
                timing[policy] = (f"worker embedded {n} products ({len(config.policy.catalog_view_names)} vectors "
                                  f"each) in {embed:.0f} s; evaluation {searched:.0f} s (encodes + searches), "
                                  f"forced-index pass {time.perf_counter() - clock:.0f} s (searches)")
                print(f"{policy}: {timing[policy]}", flush=True)
        finally:
            stop_server(home / "pgdata")

    for policy, config in POLICIES.items():
        print(f"\nPRODVEC_CATALOG_VIEWS={policy}, robust queries: {config.name}")
        print(f"{'':<14}{'quality.md':>12}{'in-memory':>12}{'database':>12}{'db - mem':>10}{'db, HNSW':>12}"
              f"{'HNSW - mem':>12}")
        print(f"{'':<14}{'(2000/200)':>12}{'(these)':>12}{'(planned)':>12}{'':>10}{'(forced)':>12}")
        for row in ROWS:
            mem, db, hnsw = reference[policy][row], results[policy]["db"][row], results[policy]["hnsw"][row]
            d_db, d_hnsw = (round(value - mem, 9) + 0.0 for value in (db, hnsw))  # + 0.0: no -0.000
            print(f"{row:<14}{paper[policy].get(row, float('nan')):>12.3f}{mem:>12.3f}{db:>12.3f}{d_db:>+10.3f}"
                  f"{hnsw:>12.3f}{d_hnsw:>+12.3f}")
    print(f"\n{n} of quality.py's 2,000 products; {len(picks)} of its 200 near-duplicates per fault (recall@1: one "
          f"query = {1 / len(picks):.3f}), {held} of its 500 held-out queries (precision@10). Wall time "
          f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
