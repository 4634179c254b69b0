"""A model change on a live catalog: backfill rate, search latency before / during / after it,
and the longest search pause at `activate` and `rollback` (issue 14's figures).

    python benchmarks/model_switch.py [--products 20000] [--photos 400] [--changed 1000]
        [--model-a open_clip:ViT-B-32:none] [--model-b open_clip:ViT-S-32-alt:none]

Catalog: --products products whose images are --photos distinct small JPEGs (worker_throughput.py's
generator), embedded with model A by the worker (only the distinct photos are encoded: the rest
of model A's vectors are copied, as the worker's vectors of the same photo would be). Then:
1. the worker's normal rate: --changed products get a new photo, `worker --once` embeds them (A);
2. searches run on their own threads throughout (more like this by sku, unfiltered and filtered
   to a category under a price), in-process through Product.similar_to;
3. `model add B`, then the worker backfills B while the searches go on (its rate);
4. `model activate B`; then B's normal rate as in 1 (another --changed products, a worker for B
   alone; then A's jobs for them are done too, untimed), and `model rollback`, each while the
   searches go on: how long the switch held products, and the longest search that overlapped it.
Random-weight models: speed figures only (on this machine: CPU).
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from worker_throughput import make_photos

from prodvec import Product, session
from prodvec.db.active_model import ActiveModel, record_active_model
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.db.model_registry import activate_model, add_model, list_models, previous_model
from prodvec.encode import load_encoder
from prodvec.encode.spec import spec_dimensions
from prodvec.search import Sku
from prodvec.worker.bulk import hnsw_index_dropped
from prodvec.worker.pipeline import Worker, WorkerOptions

CATEGORIES = 20


@dataclass
class Searches:
    """Searches on threads until stopped; each (start, end) on the clock of time.perf_counter."""

    url: str
    products: int
    threads: int
    done: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def running(self) -> Iterator[Searches]:
        workers = [threading.Thread(target=self._run, args=(seed,)) for seed in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            yield self
        finally:
            self._stop.set()
            for worker in workers:
                worker.join()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            sku = Sku(f"P{rng.randrange(self.products):07d}")
            where = [] if rng.random() < 0.5 else [Product.category == f"c{rng.randrange(CATEGORIES)}",
                                                    Product.price < Decimal(60)]
            started = time.perf_counter()
            try:
                with session(self.url) as db:
                    Product.similar_to(sku, session=db, k=10, where=where)
            except Exception as exc:  # counted and reported, the run goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.done.append((started, time.perf_counter()))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies (s) of the searches that finished in [start, end)."""
        return [finished - began for began, finished in list(self.done) if start <= finished < end]

    def longest_overlapping(self, start: float, end: float) -> float:
        """The longest search running at some moment of [start, end]."""
        return max((finished - began for began, finished in list(self.done) if began <= end and finished >= start),
                   default=0.0)


def summary(latencies: list[float]) -> str:
    if len(latencies) < 2:
        return f"{len(latencies)} searches"
    cuts = statistics.quantiles(latencies, n=100)
    return f"{len(latencies)} searches, p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


def load_catalog(url: str, photos: list[Path], products: int, model_a: str) -> float:
    """Products over the photos, model A's vectors by the worker (distinct photos) and copied
    (the rest); the HNSW index built once at the end. Returns the worker's seconds."""
    rng = random.Random(1)
    with connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO products (sku, category, price, stock, image) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::int[], %s::text[])",
            ([f"P{i:07d}" for i in range(products)], [f"c{rng.randrange(CATEGORIES)}" for _ in range(products)],
             [round(rng.uniform(5, 200), 2) for _ in range(products)], [rng.randrange(3) for _ in range(products)],
             [str(photos[i % len(photos)]) for i in range(products)]),
        )
        # The worker embeds one product per photo; the others take its vector.
        conn.execute("DELETE FROM embedding_jobs WHERE product_id > %s", (len(photos),))
    with hnsw_index_dropped(url):
        started = time.perf_counter()
        Worker(url, load_encoder(model_a, "cpu"), WorkerOptions()).run(once=True)
        seconds = time.perf_counter() - started
        with connect(url, autocommit=True) as conn:
            conn.execute("UPDATE products AS p SET embedding = e.embedding, embedding_model = e.embedding_model, "
                         "embedded_image = e.embedded_image, embedded_at = e.embedded_at "
                         "FROM products AS e WHERE e.image = p.image AND e.id <= %s AND p.id > %s",
                         (len(photos), len(photos)))
            conn.execute("VACUUM ANALYZE products")
    return seconds


def normal_rate(url: str, model: str, photo: Path, changed: int) -> float:
    """Products/s of a worker for ``model`` alone, embedding the first ``changed`` products after
    their photo changed to ``photo`` (the worker's normal work: new and changed products)."""
    with connect(url, autocommit=True) as conn:
        conn.execute("UPDATE products SET image = %s WHERE id <= %s", (str(photo), changed))
    worker = Worker(url, load_encoder(model, "cpu"), WorkerOptions())
    started = time.perf_counter()
    return worker.run(once=True).embedded / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--photos", type=int, default=400, help="distinct product photos")
    parser.add_argument("--changed", type=int, default=1_000, help="products given a new photo for the normal rate")
    parser.add_argument("--model-a", default="open_clip:ViT-B-32:none")
    parser.add_argument("--model-b", default="open_clip:ViT-S-32-alt:none")
    parser.add_argument("--search-threads", type=int, default=2)
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="search-only time before and after")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="prodvec-model-switch-"))
    server = ensure_server(workdir / "pgdata")
    try:
        ensure_database(server, "switch")
        url = with_dbname(server, "switch")
        upgrade(url, spec_dimensions(args.model_a))
        with connect(url, autocommit=True) as conn:
            record_active_model(conn, ActiveModel(args.model_a, spec_dimensions(args.model_a), "single"))
        photos = make_photos(workdir / "photos", args.photos + 2, 160, seed=3)
        seconds = load_catalog(url, photos[:-2], args.products, args.model_a)
        print(f"catalog: {args.products} products over {args.photos} photos; model A {args.model_a} embedded "
              f"{args.photos} distinct photos in {seconds:.1f} s", flush=True)

        normal_a = normal_rate(url, args.model_a, photos[-1], args.changed)
        print(f"normal rate (model A, {args.changed} changed products): {normal_a:.1f} products/s", flush=True)

        searches = Searches(url, args.products, args.search_threads)
        with searches.running():
            marks = {"start": time.perf_counter()}
            time.sleep(args.phase_seconds)
            marks["add"] = time.perf_counter()
            model_b = ActiveModel(args.model_b, spec_dimensions(args.model_b), "single")
            added, queued, _ = add_model(url, model_b)
            marks["backfill"] = time.perf_counter()
            backfilled = Worker(url, load_encoder(args.model_a, "cpu"), WorkerOptions(),
                                loader=lambda spec: load_encoder(spec, "cpu")).run(once=True).embedded
            marks["after"] = time.perf_counter()
            time.sleep(args.phase_seconds)
            with connect(url, autocommit=True) as conn:
                marks["activate"] = time.perf_counter()
                _, held_activate = activate_model(conn, next(m for m in list_models(conn) if m.id == added.id))
                marks["activated"] = time.perf_counter()
            time.sleep(args.phase_seconds)
            marks["normal_b"] = time.perf_counter()
            normal_b = normal_rate(url, args.model_b, photos[-2], args.changed)
            Worker(url, load_encoder(args.model_a, "cpu"), WorkerOptions()).run(once=True)  # A's, for the rollback
            with connect(url, autocommit=True) as conn:
                marks["rollback"] = time.perf_counter()
                _, held_rollback = activate_model(conn, previous_model(conn))
                marks["rolled_back"] = time.perf_counter()
            time.sleep(args.phase_seconds / 2)
            marks["end"] = time.perf_counter()

        backfill_seconds = marks["after"] - marks["backfill"]
        print(f"model add B ({args.model_b}): {marks['backfill'] - marks['add']:.2f} s (columns, indexes, "
              f"{queued} products queued)")
        print(f"backfill rate (model B, searches running): {backfilled / backfill_seconds:.1f} products/s "
              f"({backfilled} in {backfill_seconds:.0f} s); normal rate of model B (active, searches running) "
              f"{normal_b:.1f} products/s; of model A {normal_a:.1f} products/s")
        print(f"searches before:          {summary(searches.between(marks['start'], marks['add']))}")
        print(f"searches during backfill: {summary(searches.between(marks['backfill'], marks['after']))}")
        print(f"searches after:           {summary(searches.between(marks['after'], marks['activate']))}")
        print(f"searches on model B:      {summary(searches.between(marks['activated'], marks['normal_b']))}")
        for name, start, end, held in (("activate", "activate", "activated", held_activate),
                                       ("rollback", "rollback", "rolled_back", held_rollback)):
            longest = searches.longest_overlapping(marks[start], marks[end])
            print(f"{name}: switch took {held * 1000:.0f} ms; longest search overlapping it {longest * 1000:.0f} ms")
        first = f" (first: {searches.errors[0]})" if searches.errors else ""
        print(f"failed searches: {len(searches.errors)}{first}")
    finally:
        stop_server(workdir / "pgdata")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
