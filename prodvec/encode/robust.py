"""Robust image search: look at query photos (and products) a few ways, let each product keep its best match.

Real query photos are tilted, noisy, compressed, cropped, thumbnails. A :class:`ViewPolicy` says
which *views* of a query are embedded (the photo, turned both ways, a coarse thumbnail), which
views of each product the catalog stores, and the distance added to each view's matches. A
product's fused distance is its best (query view, catalog view) pair's, plus both views'
penalties, so extra views only win when clearly better. Works with any encoder: it only changes
the pixels the encoder is shown.

Two policies, measured with benchmarks/quality.py (numbers in benchmarks/quality.md; penalties
and sizes chosen on its ``--split tune`` photos, reported on the others):

- ``SINGLE_VIEW``: the catalog holds one vector per product, the photo as the encoder crops it
  (PRODVEC_CATALOG_VIEWS=single, the default). Query views: photo, turned ±15°, coarse 32 px.
- ``MULTI_VIEW``: the catalog holds two vectors per product, the whole photo *fitted* inside
  the encoder's centre crop (the default crop cuts the borders, where an off-centre product is)
  and a coarse 24 px thumbnail (a noisy, compressed or tiny query matches it best, since both
  have lost the same fine detail), PRODVEC_CATALOG_VIEWS=multi: products.embedding and
  embedding_coarse. Query views: fitted photo, turned ±15°, coarse 24 px.

Tried in exploratory runs (tuning photos) and left out: averaging views into one vector (one
search, but worse), auto-contrast and denoising filters (no better than the coarse view),
re-centring on the product, padded-corner query views, a grey-scale query view, a third stored
view (the centre 75 %: +0.005 on average for 1.5× the storage), coarse sizes 16/32/48 px (24 px
wins on noise and thumbnails together; 20 px, the benchmark's own thumbnail size, was left out
as overfitting). Re-ranking the top candidates was measured too and not needed: re-encoding 50
candidates shrunk to a tiny query's own size lifts thumbnails to 0.98, and comparing spatial
feature maps helps occlusion (+0.08) and off-centre crops (+0.12) but costs noise (−0.2) and
turned photos (−0.17), needs the model's feature maps (not any encoder) and the candidates' photos.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from prodvec.encode.base import Encoder
from prodvec.images.views import SINGLE_VIEW, ViewPolicy


def encode_queries(
    encoder: Encoder, images: Sequence[Image.Image], *, robust: bool, policy: ViewPolicy = SINGLE_VIEW,
    batch_size: int = 64,
) -> np.ndarray:
    """Query photos → N×V×D unit vectors: V = the policy's query views when robust, else 1 (its photo view)."""
    keep = crop_keep(encoder)
    if robust:
        return _encode(encoder, images, lambda image: policy.query_views(image, keep), batch_size)
    return _encode(encoder, images, lambda image: [policy.photo_view(image, keep)], batch_size)


def encode_products(
    encoder: Encoder, images: Sequence[Image.Image], *, policy: ViewPolicy = SINGLE_VIEW, batch_size: int = 64
) -> np.ndarray:
    """Product photos → N×C×D unit vectors, one per catalog view of the policy (what the worker stores)."""
    keep = crop_keep(encoder)
    return _encode(encoder, images, lambda image: policy.catalog_views(image, keep), batch_size)


def crop_keep(encoder: Encoder) -> float:
    """Share of a square photo's side the encoder's preprocessing keeps (its centre crop ÷ its resize).

    0.875 for timm's ImageNet transform, 1.0 for open_clip's (which resizes to the crop size).
    """
    steps = getattr(encoder.preprocess, "transforms", ())
    resize = next((t.size for t in steps if isinstance(t, transforms.Resize)), None)
    crop = next((t.size for t in steps if isinstance(t, transforms.CenterCrop)), None)
    resize = resize[0] if isinstance(resize, (list, tuple)) else resize
    if not isinstance(resize, int) or crop is None:
        return 1.0
    return min(1.0, min(crop) / resize)


def _encode(
    encoder: Encoder, images: Sequence[Image.Image], views: Callable[[Image.Image], list[Image.Image]], batch_size: int
) -> np.ndarray:
    shown = [view for image in images for view in views(image)]
    vectors = [
        encoder.encode_images(torch.stack([encoder.preprocess(view) for view in shown[start : start + batch_size]]))
        for start in range(0, len(shown), batch_size)
    ]
    flat = np.concatenate(vectors) if vectors else np.empty((0, encoder.dimensions), dtype=np.float32)
    return flat.reshape(len(images), -1, encoder.dimensions)
