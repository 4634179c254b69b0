"""Fashion-MNIST's 70,000 photos through an encoder, cached: real image features for benchmarks.

    python benchmarks/fashion_features.py [--model timm:efficientnet_lite0]   # encodes what is not cached

Each photo is drawn dark-on-white (fashion_mnist.to_photo) and embedded as the worker stores a
product photo (robust.encode_products, the default single view); with ``inverted`` the same photo
white-on-black as published, a look no catalog photo has. Vectors are cached in chunks of 5,000
under benchmarks/results/ (git-ignored), so an interrupted run goes on where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from benchmarks.fashion_mnist import Split, load, to_photo
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from fashion_mnist import Split, load, to_photo

from prodvec.encode import Encoder, load_encoder, robust

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 5_000
DEFAULT_MODEL = "timm:efficientnet_lite0"
#: What cached vectors depend on besides the model and the photos.
CODE = inspect.getsource(to_photo) + inspect.getsource(robust.encode_products)


def features(split: Split, rows: slice = slice(None), *, model: str = DEFAULT_MODEL, inverted: bool = False,
             cache: Path = RESULTS, encoder: Encoder | None = None) -> np.ndarray:
    """N×D unit vectors of ``split``'s photos ``rows``: read from the cache, encoding the chunks it lacks."""
    images, _ = load(split)
    start, stop, _ = rows.indices(len(images))
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for first in range(start - start % CHUNK, stop, CHUNK):
        # A chunk ends at ``stop`` too: a few inverted query photos need not encode 5,000.
        chunk = _chunk(split, first, images[first:min(first + CHUNK, stop)], model, inverted, cache, encoder)
        parts.append(chunk[max(start - first, 0):stop - first])
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def _chunk(split: Split, first: int, pixels: np.ndarray, model: str, inverted: bool, cache: Path,
           encoder: Encoder | None) -> np.ndarray:
    key = f"{model}|{split}|{first}|{len(pixels)}|{inverted}|{CODE}"
    path = cache / f"fashion-features-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    if path.exists():
        return np.load(path)
    encoder = encoder or load_encoder(model)
    started = time.perf_counter()
    photos = [_photo(image, inverted) for image in pixels]
    vectors = robust.encode_products(encoder, photos)[:, 0]
    np.save(path, vectors)
    print(f"  encoded {split} {first:,}–{first + len(pixels):,}{' inverted' if inverted else ''}: "
          f"{len(pixels) / (time.perf_counter() - started):.1f} photos/s", file=sys.stderr, flush=True)
    return vectors


def _photo(pixels: np.ndarray, inverted: bool) -> Image.Image:
    return Image.fromarray(pixels).convert("RGB") if inverted else to_photo(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    args = parser.parse_args()
    started = time.perf_counter()
    encoder = load_encoder(args.model, args.device)
    for split in ("t10k", "train"):
        vectors = features(split, model=args.model, encoder=encoder)
        print(f"{split}: {vectors.shape[0]:,} × {vectors.shape[1]} cached", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
