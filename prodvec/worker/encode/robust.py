"""Robust query embedding: look at a query photo a few ways, and let each product keep its best match.

Real query photos are tilted, noisy, compressed. Each query is embedded as several *views*:
the photo as it is, turned both ways (tilt), and shrunk to a coarse thumbnail (sensor noise and
JPEG blocks average out, the shape stays). Each view is searched, and a product's distance is
its best view's, the extra views counted ``EXTRA_VIEW_PENALTY`` further so they only win when
clearly better: a clean photo still finds what it found before. Works with any encoder: it only
changes the pixels the encoder is shown.

Measured with benchmarks/quality.py (numbers in benchmarks/quality.md): near-duplicate recall@1
under nine photo faults rises (tilt and noise most), category precision on clean photos stays
the same. Tried in exploratory runs of that benchmark and left out: averaging the views into one
vector (one search: worse than plain), auto-contrast (≤ 0.03 on the light faults, which the
encoder already handles, and stretching each channel alone changes a coloured product's colour),
denoising filters (median, Gaussian, non-local means: no better than the coarse view on noise,
and slower), re-centring on the product (helped off-centre crops as much as it cost thumbnails).
Costs: ``len(VIEW_NAMES)``× the encoding and the searches per query.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from prodvec.worker.encode.base import Encoder

#: Tilt of the turned views, degrees each way: covers photos taken at 10–25°.
ROTATION_DEGREES = 15.0
#: Longer side of the coarse view, px: fine noise and compression blocks average out, the shape stays.
COARSE_SIDE = 32
#: Cosine distance added to the extra views' matches (the photo as it is pays none).
EXTRA_VIEW_PENALTY = 0.03
#: Views per robust query, in the order `views` returns them.
VIEW_NAMES = ("photo", f"turned +{ROTATION_DEGREES:g}°", f"turned -{ROTATION_DEGREES:g}°", f"coarse {COARSE_SIDE} px")

K = TypeVar("K", bound=Hashable)


def views(image: Image.Image) -> list[Image.Image]:
    """The robust views of one RGB query photo, in ``VIEW_NAMES`` order."""
    photo = image.convert("RGB")
    # White fill: the corners a turn uncovers look like a product shot's background.
    turned = [
        photo.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
        for angle in (ROTATION_DEGREES, -ROTATION_DEGREES)
    ]
    return [photo, *turned, coarse_view(photo)]


def view_penalties(count: int) -> np.ndarray:
    """Distance added to each of ``count`` views' matches: none for the first (the photo as it is)."""
    return np.array([0.0] + [EXTRA_VIEW_PENALTY] * (count - 1), dtype=np.float32)


def encode_queries(
    encoder: Encoder, images: Sequence[Image.Image], *, robust: bool, batch_size: int = 64
) -> np.ndarray:
    """Query photos → N×V×D unit vectors: V = len(VIEW_NAMES) when robust, else 1 (the photo as is)."""
    shown = [view for image in images for view in views(image)] if robust else list(images)
    vectors = [
        encoder.encode_images(torch.stack([encoder.preprocess(view) for view in shown[start : start + batch_size]]))
        for start in range(0, len(shown), batch_size)
    ]
    flat = np.concatenate(vectors) if vectors else np.empty((0, encoder.dimensions), dtype=np.float32)
    return flat.reshape(len(images), -1, encoder.dimensions)


def fused_distances(queries: np.ndarray, catalog: np.ndarray) -> np.ndarray:
    """Exact fused cosine distances, N×M, from N×V×D query views and an M×D catalog (in memory)."""
    penalties = view_penalties(queries.shape[1])
    per_view = 1.0 - np.einsum("nvd,md->nvm", queries, catalog) + penalties[None, :, None]
    return per_view.min(axis=1)


def merge_views(per_view: Sequence[Sequence[tuple[K, float]]], k: int) -> list[tuple[K, float]]:
    """One query's top-k from its views' top-k (key, cosine distance) lists, nearest first.

    Exact: a product in the fused top k is in the top k of the view that gives its best distance.
    """
    best: dict[K, float] = {}
    for penalty, hits in zip(view_penalties(len(per_view)), per_view):
        for key, distance in hits:
            fused = distance + float(penalty)
            if fused < best.get(key, np.inf):
                best[key] = fused
    return sorted(best.items(), key=lambda item: item[1])[:k]


def coarse_view(image: Image.Image) -> Image.Image:
    """The photo shrunk (box filter: a plain average) to ``COARSE_SIDE`` px on its longer side."""
    scale = COARSE_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)
