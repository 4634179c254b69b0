"""Where the decode stage's time goes, piece by piece, on one batch of 800 px JPEGs.

    python benchmarks/decode_stages.py --device cuda          # on a GPU machine
    python benchmarks/decode_stages.py --device cpu --photos 32

Times, each alone and in img/s: reading the files, the header check that routes a JPEG to
the batched path (gpu_decode.batchable), torchvision's decode_jpeg at several batch sizes,
the encoder's resize/crop/normalise on the decoded tensors, GpuJpegDecoder.decode as the
worker calls it (one thread, and four at once), and the PIL path (prepare()) in a 16-thread
pool with torch's default intra-op threads and with one. benchmarks/worker_throughput.py
measures the same stage inside the worker; the gap between the two is the pipeline's cost.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from worker_throughput import make_photos

from prodvec.encode import load_encoder
from prodvec.queue import Job
from prodvec.worker.gpu_decode import GpuJpegDecoder, TensorTransform, batchable
from prodvec.worker.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda / cpu [cuda]")
    parser.add_argument("--photos", type=int, default=512, help="photos in the batch [512]")
    parser.add_argument("--model", default="open_clip:ViT-B-32:none", help="whose transform [open_clip:ViT-B-32:none]")
    args = parser.parse_args()

    encoder = load_encoder(args.model, args.device)
    decoder = GpuJpegDecoder(TensorTransform.of(encoder), encoder.device)
    count = args.photos
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)

    def timed(label: str, run: Callable[[], object], repeats: int = 3) -> None:
        run()  # warm-up
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        sync()
        print(f"{label:<58}{count * repeats / (time.perf_counter() - started):>10.0f} img/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="prodvec-decode-") as tmp:
        paths = make_photos(Path(tmp), count, 800, seed=3)
        jpegs = [path.read_bytes() for path in paths]
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
        print(f"{count} 800 px JPEGs, {encoder.spec}'s transform, on {encoder.device}")
        timed("read the files, 1 thread", lambda: [path.read_bytes() for path in paths])
        timed("batchable() header check, 1 thread", lambda: [batchable(data) for data in jpegs])
        for size in (32, 128, 512):
            timed(f"decode_jpeg, batches of {size}", lambda size=size: [
                decode_jpeg(encoded[i : i + size], mode=ImageReadMode.RGB, device=encoder.device)
                for i in range(0, count, size)
            ])
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=encoder.device)
        timed("resize + crop + normalise the decoded batch", lambda: decoder._transform(list(decoded)))
        timed("GpuJpegDecoder.decode, one thread", lambda: decoder.decode(jpegs))
        quarter = max(1, count // 4)
        with ThreadPoolExecutor(4) as pool:
            timed("GpuJpegDecoder.decode, 4 threads at once", lambda: list(
                pool.map(decoder.decode, [jpegs[i : i + quarter] for i in range(0, count, quarter)])
            ))
        jobs = [Job(i, str(path), 1, path.stem) for i, path in enumerate(paths)]
        default_threads = torch.get_num_threads()
        for torch_threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(torch_threads)
            with ThreadPoolExecutor(16) as pool:
                timed(f"PIL prepare(), 16 threads, torch threads {torch_threads}",
                      lambda pool=pool: list(pool.map(lambda job: prepare(job, encoder), jobs)), repeats=1)
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
