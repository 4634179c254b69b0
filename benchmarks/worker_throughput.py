"""Embedding worker throughput, stage by stage, against a fresh embedded PostgreSQL.

    python benchmarks/worker_throughput.py                      # 160 photos, ViT-B-32 random weights, CPU
    python benchmarks/worker_throughput.py --images 1000 --model open_clip:ViT-B-32:laion2b_s34b_b79k
    python benchmarks/worker_throughput.py --device cuda --images 40000 --photos 4000 \
        --batch-size 512 --decode-threads 16 --prefetch-batches 4 --bulk   # one GPU

Generates product-like 800 px JPEG photos (gradients + random shapes, quality 90; --photos
distinct ones, reused round-robin when --images is larger), imports one product per image
into a new database on a temporary embedded server and measures, in one run:

  (a) bare encoder      pre-decoded tensors, already on the device, through the model at the
                        worker's batch size: the ceiling
  (b) decode ceiling    load + decode + preprocess as the worker does it (Preparer), batch by
                        batch; on CUDA both the batched GPU JPEG path and PIL's, for comparison
  (c) write-back        random vectors written through prodvec.queue.write_back for claimed jobs,
                        into the HNSW-indexed column and into the same column without the index
                        (+ what building the index afterwards costs)
  (d) end to end        Worker.run(once=True): claim → decode → encode → writer thread, with
                        the HNSW index in place, or dropped first with --bulk (as
                        `prodvec worker --once --bulk` does; its rebuild and vacuum timed on their own)

and prints img/s for each and the ratio (d) / (a). Random weights are fine for speed (the
network does the same arithmetic), never for quality.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from prodvec import queue as jobs
from prodvec.db.active_model import ActiveModel, record_active_model
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.db.model_registry import list_models
from prodvec.encode import load_encoder, spec_dimensions
from prodvec.worker.bulk import drop_hnsw_index, rebuild_hnsw_index, vacuum_products
from prodvec.worker.pipeline import Worker, WorkerOptions
from prodvec.worker.prepare import Preparer


def make_photos(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Varied, product-like photos, made in parallel (one process per core)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{i:06d}.jpg" for i in range(count)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_photo, paths, [size] * count, [seed + i for i in range(count)], chunksize=32))
    return paths


def _make_photo(path: Path, size: int, seed: int) -> None:
    """A soft gradient background and a few coloured shapes."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    top, bottom = rng.integers(120, 256, 3), rng.integers(60, 256, 3)
    t = ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
    background = (top * (1 - t) + bottom * t) * np.ones((size, size, 1), dtype=np.float32)
    background += rng.normal(0, 6, (size, size, 1)).astype(np.float32)  # sensor-like noise
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.integers(0, size - 100, 2)
        w, h = rng.integers(60, size // 2, 2)
        box = (int(x0), int(y0), int(min(size, x0 + w)), int(min(size, y0 + h)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle(box, fill=colour)
        elif shape == 1:
            draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=3)
        else:
            points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=colour)
    if seed % 3 == 0:
        image = image.filter(ImageFilter.GaussianBlur(1.2))
    image.save(path, quality=90)


def insert_products(conn, images: list[str], prefix: str) -> None:
    skus = [f"{prefix}{i:07d}" for i in range(len(images))]
    conn.execute("INSERT INTO products (sku, image) SELECT * FROM unnest(%s::text[], %s::text[])", (skus, images))


def all_jobs(conn) -> list[jobs.Job]:
    rows = conn.execute("SELECT j.product_id, j.image, j.attempts, p.sku FROM embedding_jobs AS j "
                        "JOIN products AS p ON p.id = j.product_id ORDER BY j.product_id")
    return [jobs.Job(*row) for row in rows]


def bench_decode(encoder, job_list, options: WorkerOptions, *, gpu_decode: bool) -> tuple[float, list[torch.Tensor]]:
    """img/s of stages 1+2 as the worker runs them, prefetch_batches batches in flight; returns
    the first batch's pixels (on the encoder's device) for the encoder benchmark."""
    preparer = Preparer(encoder, threads=options.decode_threads, gpu_decode=gpu_decode)
    batches = [job_list[start : start + options.batch_size] for start in range(0, len(job_list), options.batch_size)]
    in_flight: deque = deque()
    sample: list[torch.Tensor] = []
    try:
        started = time.perf_counter()
        for batch in batches:
            in_flight.append(preparer.submit(batch))
            if len(in_flight) > options.prefetch_batches:
                pixels = _pixels(in_flight.popleft().result(), encoder)
                sample = sample or pixels
        while in_flight:
            pixels = _pixels(in_flight.popleft().result(), encoder)
            sample = sample or pixels
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    finally:
        preparer.close()
    return len(job_list) / seconds, sample


def _pixels(prepared, encoder) -> list[torch.Tensor]:
    errors = [item.error for item in prepared if item.error is not None]
    if errors:
        raise SystemExit(f"decode failed: {errors[0]}")
    return [item.pixels.to(encoder.device) for item in prepared]


def bench_encoder(encoder, sample: list[torch.Tensor], count: int, batch_size: int) -> float:
    """img/s of the model alone on `count` images: one batch of real pixels, on the device, repeated."""
    batch = torch.cat([sample[i % len(sample)] for i in range(batch_size)])  # each 1×3×S×S: one catalog view
    encoder.encode_images(batch)  # warm-up (allocator, kernels)
    started = time.perf_counter()
    done = 0
    while done < count:
        encoder.encode_images(batch[: count - done])
        done += min(batch_size, count - done)
    return count / (time.perf_counter() - started)


def bench_write_back(url: str, rows: int, dims: int, batch_size: int, *, indexed: bool) -> tuple[float, float | None]:
    """Rows/s of claim + write_back of random unit vectors; with indexed=False the HNSW indexes
    are dropped first and the time to rebuild them afterwards, as `worker --once --bulk` does
    (prodvec.worker.bulk: same index options, memory and parallel workers), is returned too."""
    rng = np.random.default_rng(1)
    with connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE products CASCADE")
        insert_products(conn, [f"/nowhere/{i}.jpg" for i in range(rows)], "W")
    if not indexed:
        drop_hnsw_index(url)
    with connect(url, autocommit=True) as conn:
        [active, *_] = list_models(conn)
        started = time.perf_counter()
        while True:
            claim = jobs.claim(conn, active.id, limit=batch_size, lease_seconds=60)
            if not claim.jobs:
                break
            vectors = rng.standard_normal((len(claim.jobs), dims)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            jobs.write_back(conn, claim, claim.jobs, vectors, model="bench")
        rate = rows / (time.perf_counter() - started)
        assert conn.execute("SELECT count(*) FROM products WHERE embedding IS NOT NULL").fetchone()[0] == rows
    return rate, None if indexed else rebuild_hnsw_index(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160, help="products (images) to embed [160]")
    parser.add_argument("--photos", type=int, default=None, help="distinct photos to generate [--images]")
    parser.add_argument("--size", type=int, default=800, help="photo width and height in px [800]")
    parser.add_argument("--model", default="open_clip:ViT-B-32:none", help="encoder spec [open_clip:ViT-B-32:none]")
    parser.add_argument("--device", default=None, help="cpu / cuda [cuda if available]")
    parser.add_argument("--batch-size", type=int, default=WorkerOptions.batch_size)
    parser.add_argument("--decode-threads", type=int, default=WorkerOptions.decode_threads)
    parser.add_argument("--prefetch-batches", type=int, default=WorkerOptions.prefetch_batches)
    parser.add_argument("--gpu-decode", action=argparse.BooleanOptionalAction, default=None,
                        help="batched JPEG decode on the GPU in (d) [on when the model runs on CUDA]")
    parser.add_argument("--bulk", action="store_true", help="(d) with the HNSW index dropped, rebuilt after")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads [torch's default]")
    parser.add_argument("--writeback-rows", type=int, default=3000, help="rows for the write-back ceiling [3000]")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate (a) and (d) this many times and keep each one's best [2]: other load "
                             "on the machine then hits both alike")
    parser.add_argument("--workdir", type=Path, default=None, help="keep photos and pgdata here [a temp dir]")
    args = parser.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="prodvec-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        photos = make_photos(workdir / "photos", args.photos or args.images, args.size, seed=7)
        print(f"generated {len(photos)} {args.size} px JPEGs (quality 90) in {time.perf_counter() - started:.1f} s")
        images = [str(photos[i % len(photos)]) for i in range(args.images)]
        encoder = load_encoder(args.model, args.device)
        dims = spec_dimensions(encoder.spec)
        options = WorkerOptions(batch_size=args.batch_size, decode_threads=args.decode_threads,
                                prefetch_batches=args.prefetch_batches, gpu_decode=args.gpu_decode)
        worker_decodes_on_gpu = Worker("", encoder, options).decodes_on_gpu
        random_weights = encoder.spec.endswith(":none")
        print(f"model {encoder.spec} on {encoder.device}{' (RANDOM weights: speed only)' if random_weights else ''}; "
              f"{args.images} images; batch {args.batch_size}, decode threads {args.decode_threads}, "
              f"prefetch {args.prefetch_batches}, {'GPU JPEG decode' if worker_decodes_on_gpu else 'PIL decode'}, "
              f"{'bulk (index dropped)' if args.bulk else 'HNSW index in place'}; "
              f"torch threads {torch.get_num_threads()}, {torch.get_num_interop_threads()} inter-op", flush=True)
        pgdata = workdir / "pgdata"
        server = ensure_server(pgdata)
        try:
            ensure_database(server, "bench")
            ensure_database(server, "bench_writes")
            url, writes_url = with_dbname(server, "bench"), with_dbname(server, "bench_writes")
            for database in (url, writes_url):  # as `prodvec migrate` does
                upgrade(database, dims)
                with connect(database, autocommit=True) as conn:
                    record_active_model(conn, ActiveModel(encoder.spec, dims, "single"))
            with connect(url, autocommit=True) as conn:
                insert_products(conn, images, "P")
                job_list = all_jobs(conn)
            if args.bulk:  # as `prodvec worker --once --bulk` does (prodvec.worker.bulk.hnsw_index_dropped)
                drop_hnsw_index(url)

            decode_rates = {}
            # The worker's own path, and PIL's beside it when the worker decodes on the GPU.
            for gpu in (True, False) if worker_decodes_on_gpu else (False,):
                decode_rates[gpu], sample = bench_decode(encoder, job_list, options, gpu_decode=gpu)
                print(f"decode ceiling ({'batched JPEG' if gpu else 'PIL'}): {decode_rates[gpu]:.1f} img/s", flush=True)
            encoder_rates, e2e_rates = [], []
            for round_ in range(args.rounds):
                encoder_rates.append(bench_encoder(encoder, sample, args.images, args.batch_size))
                if round_:
                    with connect(url, autocommit=True) as conn:
                        requeue(conn)
                started = time.perf_counter()
                stats = Worker(url, encoder, options).run(once=True)
                e2e_rates.append(stats.embedded / (time.perf_counter() - started))
                if stats.embedded != args.images:
                    raise SystemExit(f"end to end embedded {stats.embedded} of {args.images}: {stats.summary()}")
                print(f"round {round_ + 1}: bare encoder {encoder_rates[-1]:.1f} img/s, "
                      f"end to end {e2e_rates[-1]:.1f} img/s",
                      flush=True)
            bulk_rebuild = rebuild_hnsw_index(url) if args.bulk else None
            bulk_vacuum = vacuum_products(url) if args.bulk else None
            del sample

            indexed_rate, _ = bench_write_back(writes_url, args.writeback_rows, dims, args.batch_size, indexed=True)
            plain_rate, rebuild = bench_write_back(writes_url, args.writeback_rows, dims, args.batch_size,
                                                   indexed=False)
        finally:
            stop_server(pgdata)

    print()
    print(f"{'stage':<56}{'img/s':>10}")
    encoder_rate, e2e_rate = max(encoder_rates), max(e2e_rates)
    print(f"{'(a) bare encoder, pre-decoded tensors on the device':<56}{encoder_rate:>10.1f}")
    for gpu, rate in decode_rates.items():
        label = "(b) decode ceiling: " + (
            f"batched JPEG decode on {encoder.device.type}" if gpu else "load+decode+preprocess, PIL pool")
        print(f"{label:<56}{rate:>10.1f}")
    print(f"{'(c) write-back ceiling, HNSW-indexed column':<56}{indexed_rate:>10.1f}")
    print(f"{'    write-back ceiling, index dropped':<56}{plain_rate:>10.1f}")
    e2e_label = "(d) end to end, Worker.run(once=True)" + (", index dropped" if args.bulk else "")
    print(f"{e2e_label:<56}{e2e_rate:>10.1f}")
    print()
    print(f"end-to-end / bare encoder = {e2e_rate / encoder_rate:.2f} (best of {args.rounds} alternating rounds each; "
          f"per round: {', '.join(f'{d / a:.2f}' for a, d in zip(encoder_rates, e2e_rates, strict=True))})")
    if bulk_rebuild is not None and bulk_vacuum is not None:
        print(f"bulk: rebuilding the HNSW indexes over {args.images} vectors afterwards took {bulk_rebuild:.1f} s, "
              f"the vacuum {bulk_vacuum:.1f} s (both left out of (d)); embed+rebuild+vacuum "
              f"{args.images / (args.images / e2e_rate + bulk_rebuild + bulk_vacuum):.0f} img/s overall")
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end "
          "(other processes on the machine slow every stage)")
    print(f"HNSW insert cost: {args.writeback_rows} rows write back at {indexed_rate:.0f} rows/s indexed vs "
          f"{plain_rate:.0f} rows/s unindexed ({plain_rate / indexed_rate:.1f}x); rebuilding the index after "
          f"took {rebuild:.1f} s, so drop+write+rebuild runs at "
          f"{args.writeback_rows / (args.writeback_rows / plain_rate + rebuild):.0f} rows/s")


def requeue(conn) -> None:
    """Forget the vectors and queue every product again (for the next end-to-end round)."""
    conn.execute("UPDATE products SET embedding = NULL, embedding_model = NULL, embedded_image = NULL, "
                 "embedded_at = NULL")
    conn.execute("SELECT prodvec_enqueue(array_agg(id), array_agg(image)) FROM products")


if __name__ == "__main__":
    main()
