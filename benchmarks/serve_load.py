"""`prodvec serve` under load over loopback, against the same work done in-process, in one run.

    python benchmarks/serve_load.py            # 10,000 products, ViT-B-32 random weights, CPU (minutes)
    python benchmarks/serve_load.py --quick    # smoke run (tests/test_serve_load.py): about a minute on 2 cores

Starts a real `prodvec serve` (uvicorn, 127.0.0.1, a free port) on its own embedded PostgreSQL
(PRODVEC_HOME in a temporary directory, or --pgdata's parent) holding a synthetic catalog:
--products random unit vectors (512-d, one per product, as a single-view catalog stores them)
written by binary COPY, the HNSW index built afterwards, 20 categories, log-normal prices, half
in stock. Random vectors and random weights measure speed only, never search quality.

  sku       the same "more like this" searches (k 10, no filter / one category / a category and
            a price cap / in stock under a price) through POST /v1/search {"sku": ...} with one
            client, each one interleaved with the same search in-process (prodvec.search.similar_to
            on a Session of this process), in a random order per query so that other load on the
            machine hits both alike; then --sku-clients concurrent HTTP clients.
  image     query photos (the demo catalog's photos upscaled to 640 px JPEGs) uploaded as multipart
            POST /v1/search with --image-clients concurrent clients and with one client, against
            the bare encoder: the model alone on the same queries' views (already decoded and
            preprocessed, as many queries per batch as there are clients), in queries/s.
            Robust queries (PRODVEC_ROBUST_QUERIES, on by default; --quick turns them off) search
            every photo as several views, so one query is that many images for the model.
            Alternated --rounds times, the best of each kept.
  overload  --overload-clients image clients, far more than the server's queue limit
            (--queue-limit, given to the server as PRODVEC_QUEUE_LIMIT), send back to back while
            one client keeps asking sku searches: every request is answered 200 or 503 with
            Retry-After, the server survives, and its resident memory (psutil, the server and its
            children) is sampled before and after each wave.

The server runs with PRODVEC_REQUEST_TIMEOUT=--request-timeout (120 s, not its default 30 s): on
a busy shared machine one encoder pass can take longer, and the run should measure throughput,
not time-outs. Prints a table of figures and the ratios. Exits 1 when a correctness check fails (a request
neither answered nor refused with 503 + Retry-After, no 503 at all in the overload phase, the
server gone, its memory grown by more than a quarter); speed targets are printed, not enforced.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from pgvector import HalfVector
from PIL import Image

import prodvec
from prodvec.db.connection import EMBEDDED_DATABASE, connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.demo.run import CATALOG_DIR
from prodvec.encode import Encoder, load_encoder, spec_dimensions
from prodvec.encode.robust import crop_keep
from prodvec.images.decode import decode
from prodvec.images.views import SINGLE_VIEW, embedding_model
from prodvec.models import Product
from prodvec.search import Sku, similar_to
from prodvec.worker.bulk import hnsw_index_dropped

MODEL = "open_clip:ViT-B-32:none"
CATEGORIES = 20
K = 10
#: A memory "grown" verdict needs more than this share on top of the first reading.
MEMORY_GROWTH_LIMIT = 0.25


def _size(text: str) -> Any:
    return dataclasses.field(metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each phase does; every one is also a flag (--products, --queue-limit, ...)."""

    products: int = _size("catalog size")
    sku_queries: int = _size("distinct sku searches, each run over HTTP and in-process")
    sku_clients: int = _size("concurrent clients of the sku phase")
    image_clients: int = _size("concurrent clients of the image phase (and queries per bare-encoder batch)")
    image_queries: int = _size("most queries per image measurement")
    phase_seconds: float = _size("most seconds per image measurement")
    rounds: int = _size("image measurements alternated this many times, each one's best kept")
    queue_limit: int = _size("the server's PRODVEC_QUEUE_LIMIT")
    overload_clients: int = _size("image clients of the overload phase")
    overload_seconds: float = _size("seconds per overload wave")
    overload_waves: int = _size("overload waves (server memory sampled after each)")


FULL = Sizes(products=10_000, sku_queries=300, sku_clients=16, image_clients=8, image_queries=400, phase_seconds=20.0,
             rounds=3, queue_limit=16, overload_clients=256, overload_seconds=15.0, overload_waves=2)
QUICK = Sizes(products=500, sku_queries=20, sku_clients=4, image_clients=8, image_queries=8,
              phase_seconds=3.0, rounds=1, queue_limit=8, overload_clients=48, overload_seconds=2.0, overload_waves=1)


# ---- the catalog and the queries ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SkuQuery:
    sku: str
    filters: dict[str, Any]  # the API's filter fields

    def where(self) -> list[Any]:
        """The same filters as SQLAlchemy clauses for the in-process search."""
        clauses: list[Any] = []
        if "category" in self.filters:
            clauses.append(Product.category.in_(self.filters["category"]))
        if "max_price" in self.filters:
            clauses.append(Product.price <= Decimal(str(self.filters["max_price"])))
        if self.filters.get("in_stock"):
            clauses.append(Product.stock > 0)
        return clauses


def load_catalog(url: str, products: int, model: str, seed: int) -> float:
    """Random unit vectors by binary COPY, the HNSW index rebuilt after; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((products, spec_dimensions(model)), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = rng.integers(0, CATEGORIES, products)
    prices = np.round(rng.lognormal(3.5, 0.6, products), 2)
    stocks = np.where(rng.random(products) < 0.5, 0, rng.integers(1, 50, products))
    # As the worker leaves an embedded product: the model that made its vector, and when.
    made_by, made_at = embedding_model(model, SINGLE_VIEW), datetime.now(timezone.utc)
    started = time.perf_counter()
    with hnsw_index_dropped(url), connect(url, autocommit=True) as conn:
        columns = "sku, title, category, price, stock, embedding, embedding_model, embedded_at"
        with conn.cursor().copy(f"COPY products ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "numeric", "int4", "halfvec", "text", "timestamptz"])
            for i in range(products):
                copy.write_row((sku_of(i), f"product {i}", category_of(int(categories[i])), Decimal(f"{prices[i]:.2f}"),
                                int(stocks[i]), HalfVector(vectors[i]), made_by, made_at))
    return time.perf_counter() - started


def sku_of(i: int) -> str:
    return f"SKU-{i:06d}"


def category_of(i: int) -> str:
    return f"category-{i:02d}"


def sku_queries(count: int, products: int, seed: int) -> list[SkuQuery]:
    rng = random.Random(seed)
    kinds: list[Callable[[], dict[str, Any]]] = [
        dict,
        lambda: {"category": [category_of(rng.randrange(CATEGORIES))]},
        lambda: {"category": [category_of(rng.randrange(CATEGORIES))], "max_price": 40},
        lambda: {"in_stock": True, "max_price": 30},
    ]
    return [SkuQuery(sku_of(rng.randrange(products)), kinds[i % len(kinds)]()) for i in range(count)]


def query_photos(count: int) -> list[bytes]:
    """The demo catalog's photos as a shopper's upload: 640 px RGB JPEGs, quality 90."""
    photos = []
    for path in sorted((CATALOG_DIR / "images").iterdir())[:count]:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize((640, 640), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


# ---- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(home: Path, port: int, args: argparse.Namespace, sizes: Sizes, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(PRODVEC_HOME=str(home), PRODVEC_MODEL=args.model, PRODVEC_DEVICE=args.device,
               PRODVEC_ROBUST_QUERIES="1" if args.robust else "0", PRODVEC_CATALOG_VIEWS="single",
               PRODVEC_QUEUE_LIMIT=str(sizes.queue_limit), PRODVEC_REQUEST_TIMEOUT=str(args.request_timeout))
    command = [sys.executable, "-m", "prodvec.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"prodvec serve exited with {server.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"prodvec serve not ready after {timeout:.0f} s:\n{tail(log)}")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def tail(log: Path, lines: int = 30) -> str:
    """The log's last lines but uvicorn's access lines (one per request)."""
    kept = [line for line in log.read_text(errors="replace").splitlines() if ' HTTP/1.1" ' not in line]
    return "\n".join(kept[-lines:])


def resident_mb(server: subprocess.Popen[bytes]) -> float:
    process = psutil.Process(server.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


# ---- load ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    """What a group of clients saw: latencies (s) of answered requests, every status, and failures."""

    seconds: float = 0.0
    answered: list[float] = dataclasses.field(default_factory=list)
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    refused_without_retry_after: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.answered) / self.seconds if self.seconds else 0.0


Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def run_clients(base: str, send: Send, *, clients: int, count: int, seconds: float) -> Load:
    """``clients`` clients sending back to back until ``count`` requests are sent or ``seconds`` pass."""
    load = Load()
    numbers = itertools.count()
    # Idle connections expire here before uvicorn closes them (its keep-alive: 5 s), so that a
    # request never goes out on a connection the server is closing at that moment (a ReadError).
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client() -> None:
            while time.perf_counter() < deadline and (i := next(numbers)) < count:
                sent = time.perf_counter()
                try:
                    response = await send(client, i)
                except httpx.HTTPError as exc:
                    load.failures.append(f"{type(exc).__name__} after {time.perf_counter() - sent:.1f} s: {exc}")
                    continue
                load.statuses[response.status_code] += 1
                if response.status_code == 200 and isinstance(response.json().get("hits"), list):
                    load.answered.append(time.perf_counter() - sent)
                elif response.status_code == 503:
                    load.refused_without_retry_after += "retry-after" not in response.headers
                else:
                    load.failures.append(f"{response.status_code} {response.text[:300]}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
        load.seconds = time.perf_counter() - started
    return load


def search_sku(queries: list[SkuQuery]) -> Send:
    def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        query = queries[i % len(queries)]
        return client.post("/v1/search", json={"sku": query.sku, "k": K, **query.filters})
    return send


def search_image(photos: list[bytes]) -> Send:
    def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        files = {"image": (f"query-{i}.jpg", photos[i % len(photos)], "image/jpeg")}
        return client.post("/v1/search", files=files, data={"k": str(K)})
    return send


async def overload_wave(base: str, photos: list[bytes], queries: list[SkuQuery], sizes: Sizes) -> tuple[Load, Load]:
    """The image flood and, beside it, one client asking sku searches (which need no encoder)."""
    count = 100 * sizes.overload_clients  # the time bounds the wave; the count only its size
    flood = run_clients(base, search_image(photos), clients=sizes.overload_clients, count=count,
                        seconds=sizes.overload_seconds)
    beside = run_clients(base, search_sku(queries), clients=1, count=count, seconds=sizes.overload_seconds)
    images, skus = await asyncio.gather(flood, beside)
    images.failures = [f"image client: {failure}" for failure in images.failures]
    skus.failures = [f"sku client: {failure}" for failure in skus.failures]
    return images, skus


def sku_side_by_side(base: str, url: str, queries: list[SkuQuery], seed: int) -> tuple[list[float], list[float], int]:
    """Each query over HTTP (one client) and in-process, in a random order per query; returns both
    latency lists and how many queries got the same skus both ways."""
    rng = random.Random(seed)
    http_seconds, local_seconds, same = [], [], 0
    with httpx.Client(base_url=base, timeout=120) as client:
        for query in queries:
            answers: dict[str, list[str]] = {}
            for way in rng.sample(["http", "local"], 2):
                started = time.perf_counter()
                if way == "http":
                    response = client.post("/v1/search", json={"sku": query.sku, "k": K, **query.filters})
                    response.raise_for_status()
                    answers[way] = [hit["sku"] for hit in response.json()["hits"]]
                    http_seconds.append(time.perf_counter() - started)
                else:
                    with prodvec.session(url) as session:  # one session per search, as per request
                        result = similar_to(session, Sku(query.sku), k=K, where=query.where())
                        answers[way] = [hit.product.sku for hit in result]
                    local_seconds.append(time.perf_counter() - started)
            same += answers["http"] == answers["local"]
    return http_seconds, local_seconds, same


def query_pixels(encoder: Encoder, photos: list[bytes], robust: bool) -> list[torch.Tensor]:
    """Each query photo's views as the encoder sees them (V×3×S×S), decoded and preprocessed."""
    keep = crop_keep(encoder)
    pixels = []
    for photo in photos:
        image = decode(photo, target_size=encoder.input_size)
        views = SINGLE_VIEW.query_views(image, keep) if robust else [SINGLE_VIEW.photo_view(image, keep)]
        pixels.append(torch.stack([encoder.preprocess(view) for view in views]))
    return pixels


def bare_encoder_rate(
    encoder: Encoder, pixels: list[torch.Tensor], *, per_batch: int, count: int, seconds: float
) -> float:
    """Queries/s of the model alone, ``per_batch`` queries' views per forward pass."""
    batches = [torch.cat(pixels[start : start + per_batch]) for start in range(0, len(pixels), per_batch)]
    encoder.encode_images(batches[0])  # warm-up
    started, done = time.perf_counter(), 0
    for batch in itertools.cycle(batches):
        encoder.encode_images(batch)
        done += len(batch) // len(pixels[0])
        if done >= count or time.perf_counter() - started > seconds:
            break
    return done / (time.perf_counter() - started)


def encoder_counts(base: str) -> tuple[int, int]:
    """(queries, forward passes) the server's encoder has done since it started."""
    encoder = httpx.get(f"{base}/v1/status", timeout=30).raise_for_status().json()["encoder"]
    return int(encoder["queries"]), int(encoder["passes"])


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000 if seconds else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


# ---- the run ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, short smoke run")
    for size in dataclasses.fields(Sizes):
        full, quick = getattr(FULL, size.name), getattr(QUICK, size.name)
        parser.add_argument(f"--{size.name.replace('_', '-')}", type=type(full),
                            help=f"{size.metadata['help']} [{full}; --quick {quick}]")
    parser.add_argument("--model", default=MODEL, help=f"encoder spec [{MODEL}: random weights, speed only]")
    parser.add_argument("--device", default="cpu", help="torch device of the server and the bare encoder [cpu]")
    parser.add_argument("--robust", action=argparse.BooleanOptionalAction, default=None,
                        help="PRODVEC_ROBUST_QUERIES for the server (and the bare encoder's views) "
                             "[on, as the server's default; off with --quick: a quarter of the encoder work]")
    parser.add_argument("--pgdata", type=Path,
                        help="the embedded server's data dir, named pgdata [a temp dir]; PRODVEC_HOME is its parent")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="the server's PRODVEC_REQUEST_TIMEOUT in seconds [120, not the server's 30: on a "
                             "starved shared machine one encoder pass can take longer, and the run should measure "
                             "throughput, not time-outs]")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    given = {size.name: getattr(args, size.name) for size in dataclasses.fields(Sizes)}
    sizes = dataclasses.replace(QUICK if args.quick else FULL, **{k: v for k, v in given.items() if v is not None})
    if not sizes.image_clients <= sizes.queue_limit < sizes.overload_clients:
        parser.error("the image phases must stay within the queue limit and the overload phase go past it: "
                     "--image-clients <= --queue-limit < --overload-clients")
    if args.robust is None:
        args.robust = not args.quick

    with tempfile.TemporaryDirectory(prefix="prodvec-serve-load-") as tmp:
        pgdata = args.pgdata.resolve() if args.pgdata else Path(tmp) / "home" / "pgdata"
        home = pgdata.parent
        if pgdata.name != "pgdata":
            raise SystemExit("--pgdata must be a folder named pgdata: the server finds it as $PRODVEC_HOME/pgdata")
        home.mkdir(parents=True, exist_ok=True)
        server_url = ensure_server(pgdata)
        url = with_dbname(server_url, EMBEDDED_DATABASE)
        server: subprocess.Popen[bytes] | None = None
        try:
            ensure_database(server_url, EMBEDDED_DATABASE)
            upgrade(url, spec_dimensions(args.model))
            with connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE products CASCADE")
            loaded = load_catalog(url, sizes.products, args.model, args.seed)
            print(f"catalog: {sizes.products:,} products, random {spec_dimensions(args.model)}-d vectors by COPY, "
                  f"HNSW index built after: {loaded:.1f} s", flush=True)

            port, log = free_port(), Path(tmp) / "serve.log"
            base = f"http://127.0.0.1:{port}"
            server = start_server(home, port, args, sizes, log)
            ready = wait_ready(base, server, log, timeout=300)
            encoder = load_encoder(args.model, args.device)
            photos = query_photos(64)
            pixels = query_pixels(encoder, photos, args.robust)
            views = len(pixels[0])
            print(f"prodvec serve ready in {ready:.1f} s on {base}; model {encoder.spec} on {encoder.device} "
                  f"(RANDOM weights: speed only), {views} view(s) per image query, queue limit {sizes.queue_limit}; "
                  f"torch threads {torch.get_num_threads()}", flush=True)
            return measure(base, url, server, log, encoder, photos, pixels, sizes, args.seed)
        finally:
            if server is not None:
                stop(server)
            stop_server(pgdata)


def measure(base: str, url: str, server: subprocess.Popen[bytes], log: Path, encoder: Encoder,
            photos: list[bytes], pixels: list[torch.Tensor], sizes: Sizes, seed: int) -> int:
    queries = sku_queries(sizes.sku_queries, sizes.products, seed)
    failures: list[str] = []

    def clients(send: Send, clients: int, count: int, seconds: float) -> Load:
        load = asyncio.run(run_clients(base, send, clients=clients, count=count, seconds=seconds))
        if load.statuses[503]:  # within the queue limit: a refusal here is a failure
            load.failures.append(f"{load.statuses[503]} request(s) refused with 503 from {clients} client(s), "
                                 "within the queue limit")
        if load.failures:
            print(f"  {len(load.failures)} request(s) failed, e.g. {load.failures[0]}", flush=True)
        failures.extend(load.failures)
        return load

    # Warm-up: the server's pool, planner estimates and model; this process's session and model.
    clients(search_sku(queries), 1, min(len(queries), 8), 60)
    clients(search_image(photos), 1, 2, 120)
    sku_side_by_side(base, url, queries[:4], seed)

    http_1, local_1, same = sku_side_by_side(base, url, queries, seed)
    sku_many = clients(search_sku(queries), sizes.sku_clients, len(queries) * 2, 60)
    print(f"sku: {len(queries)} searches side by side, then {sku_many.statuses[200]} with {sizes.sku_clients} clients",
          flush=True)

    bare, many, one = [], [], []
    batched = np.zeros(2)  # (queries, passes) of the encoder while many clients sent photos
    for round_ in range(sizes.rounds):
        bare.append(bare_encoder_rate(encoder, pixels, per_batch=sizes.image_clients, count=sizes.image_queries,
                                      seconds=sizes.phase_seconds))
        before = encoder_counts(base)
        many.append(clients(search_image(photos), sizes.image_clients, sizes.image_queries, sizes.phase_seconds))
        batched += np.subtract(encoder_counts(base), before)
        one.append(clients(search_image(photos), 1, sizes.image_queries, sizes.phase_seconds))
        print(f"image round {round_ + 1}: bare encoder {bare[-1]:.2f} q/s, {sizes.image_clients} clients "
              f"{many[-1].rate:.2f} q/s ({ratio(many[-1].rate, bare[-1]):.2f} of the bare encoder in the same "
              f"round), 1 client {one[-1].rate:.2f} q/s", flush=True)
    many_best = max(many, key=lambda load: load.rate)
    one_best = max(one, key=lambda load: load.rate)

    memory = [resident_mb(server)]
    waves = []
    for _ in range(sizes.overload_waves):
        images, skus = asyncio.run(overload_wave(base, photos, queries, sizes))
        failures.extend(images.failures + skus.failures)
        waves.append((images, skus))
        memory.append(resident_mb(server))
    alive = server.poll() is None and httpx.get(f"{base}/healthz", timeout=10).status_code == 200

    refused = sum(images.statuses[503] for images, _ in waves)
    no_retry_after = sum(load.refused_without_retry_after for wave in waves for load in wave)
    grown = memory[-1] > memory[0] * (1 + MEMORY_GROWTH_LIMIT)
    paired = [ratio(load.rate, rate) for load, rate in zip(many, bare, strict=True)]  # the same round's load on both
    report(sizes, http_1, local_1, same, sku_many, bare, paired, many_best, one_best, waves, memory, len(pixels[0]))
    print(f"the server's encoder took {batched[0] / max(batched[1], 1):.1f} queries a pass on average while "
          f"{sizes.image_clients} clients sent photos (GET /v1/status)")

    if failures:
        print(f"\nFAILED: {len(failures)} request(s) neither answered nor refused with 503, e.g. {failures[0]}")
        print(f"the server's log ends:\n{tail(log)}")
    if not refused:
        print("\nFAILED: no 503 during the overload phase: the queue limit did not bound the work")
    if no_retry_after:
        print(f"\nFAILED: {no_retry_after} 503 answer(s) without Retry-After")
    if not alive:
        print(f"\nFAILED: the server did not survive the overload:\n{tail(log)}")
    if grown:
        print(f"\nFAILED: the server's memory grew from {memory[0]:.0f} MB to {memory[-1]:.0f} MB")
    return 1 if failures or not refused or no_retry_after or not alive or grown else 0


def report(sizes: Sizes, http_1: list[float], local_1: list[float], same: int, sku_many: Load, bare: list[float],
           paired: list[float], many: Load, one: Load, waves: list[tuple[Load, Load]], memory: list[float],
           views: int) -> None:
    def row(label: str, rate: float, seconds: list[float] | None = None) -> None:
        p50, p99 = (percentile_ms(seconds, 50), percentile_ms(seconds, 99)) if seconds else (float("nan"),) * 2
        print(f"{label:<58}{rate:>9.1f}{p50:>10.1f}{p99:>10.1f}")

    print(f"\n{'':<58}{'q/s':>9}{'p50 ms':>10}{'p99 ms':>10}")
    row("sku, in-process similar_to (1 thread)", len(local_1) / sum(local_1), local_1)
    row("sku, HTTP, 1 client", len(http_1) / sum(http_1), http_1)
    row(f"sku, HTTP, {sizes.sku_clients} clients", sku_many.rate, sku_many.answered)
    row(f"image, bare encoder ({sizes.image_clients} queries x {views} view(s) a batch)", max(bare))
    row(f"image, HTTP, {sizes.image_clients} clients", many.rate, many.answered)
    row("image, HTTP, 1 client", one.rate, one.answered)
    for number, (images, skus) in enumerate(waves, 1):
        row(f"overload wave {number}: {sizes.overload_clients} image clients, answered", images.rate, images.answered)
        row("    and 1 sku client beside them", skus.rate, skus.answered)
    print()
    http_p50, local_p50 = percentile_ms(http_1, 50), percentile_ms(local_1, 50)
    print(f"sku p50 HTTP / in-process = {ratio(http_p50, local_p50):.2f} (target <= 2); same skus both ways in "
          f"{same}/{len(local_1)} searches")
    print(f"image q/s {sizes.image_clients} clients / bare encoder in the same round: "
          f"{', '.join(f'{r:.2f}' for r in paired)} (median {float(np.median(paired)):.2f}; target >= 0.8); "
          f"best / best {ratio(many.rate, max(bare)):.2f}; {sizes.image_clients} clients / 1 client = "
          f"{ratio(many.rate, one.rate):.2f} (best of {sizes.rounds} round(s) each)")
    for number, (images, skus) in enumerate(waves, 1):
        statuses = images.statuses + skus.statuses
        print(f"overload wave {number}: {sum(statuses.values())} requests in {images.seconds:.1f} s, statuses "
              f"{json.dumps(dict(sorted(statuses.items())))}, {images.refused_without_retry_after} 503s without "
              f"Retry-After, {len(images.failures) + len(skus.failures)} failed")
    print(f"server RSS: {' -> '.join(f'{mb:.0f} MB' for mb in memory)} (before the overload, then after each wave; "
          f"last / first = {memory[-1] / memory[0]:.2f})")
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; the "
          "clients, the server, PostgreSQL and this process share them")


if __name__ == "__main__":
    sys.exit(main())
