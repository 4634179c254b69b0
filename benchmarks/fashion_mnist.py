"""Reader for Fashion-MNIST (Zalando Research, MIT licence) as packaged by Debian.

Install the photos with ``apt-get install dataset-fashion-mnist``; they land in
``/usr/share/datasets/fashion-mnist``. Override the folder with ``$FASHION_MNIST_DIR``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

#: Class names in label order (label ``i`` is ``CATEGORIES[i]``).
CATEGORIES: tuple[str, ...] = (
    "tshirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)

Split = Literal["train", "t10k"]


def _read_idx(path: Path, header: int, magic: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install the Fashion-MNIST photos with "
            "`apt-get install dataset-fashion-mnist` (or set FASHION_MNIST_DIR)"
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad idx magic {found:#x}, expected {magic:#x}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def load(split: Split, data_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 arrays of shape (N, 28, 28) and (N,).

    Images are white-on-black as published; use :func:`to_photo` for a product-on-white look.
    """
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', not {split!r}")
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    images = _read_idx(root / f"{split}-images-idx3-ubyte.gz", header=16, magic=0x803)
    labels = _read_idx(root / f"{split}-labels-idx1-ubyte.gz", header=8, magic=0x801)
    images = images.reshape(-1, 28, 28)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def to_photo(pixels: np.ndarray, size: int = 28) -> Image.Image:
    """Turn one (28, 28) uint8 array into a dark-product-on-white RGB image of ``size`` px."""
    if pixels.shape != (28, 28) or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 array, got {pixels.shape} {pixels.dtype}")
    img = Image.fromarray(255 - pixels)  # 2-D uint8 -> mode "L"
    if size != 28:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return img.convert("RGB")
