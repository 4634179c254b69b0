"""View policies: which views of query photos and product photos are embedded, and how matches fuse.

Real query photos are tilted, noisy, compressed, cropped, thumbnails. A :class:`ViewPolicy` says
which *views* of a query are embedded (the photo, turned both ways, a coarse thumbnail), which
views of each product the catalog stores, and the distance added to each view's matches. A
product's fused distance is its best (query view, catalog view) pair's, plus both views'
penalties, so extra views only win when clearly better. Pixels only (PIL, numpy): no torch, so
settings and search can name a policy without loading a model. Encoding the views is
`prodvec.encode.robust`'s; why these policies, and what was tried and left out, is said there.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

K = TypeVar("K", bound=Hashable)
#: Fill for the corners a turn uncovers and the margins a fit adds: a product shot's background.
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class ViewPolicy:
    """Which views of queries and products are embedded, and how their matches are fused."""

    fit: bool  # photos shown whole (padded inside the encoder's centre crop), not cropped by it
    turn_degrees: float  # query views turned this far each way; 0: none
    query_coarse: int  # longer side (px) of the query's coarse view; 0: none
    catalog_coarse: int  # longer side (px) of the product's coarse view; 0: one vector per product
    query_view_penalty: float  # cosine distance added to the extra query views' matches
    catalog_view_penalty: float  # ... and to the product's coarse view's matches

    @property
    def query_view_names(self) -> tuple[str, ...]:
        turned = (f"turned +{self.turn_degrees:g}°", f"turned -{self.turn_degrees:g}°") if self.turn_degrees else ()
        coarse = (f"coarse {self.query_coarse} px",) if self.query_coarse else ()
        return (self._photo_name, *turned, *coarse)

    @property
    def catalog_view_names(self) -> tuple[str, ...]:
        return (self._photo_name, *((f"coarse {self.catalog_coarse} px",) if self.catalog_coarse else ()))

    @property
    def catalog_is_plain_photo(self) -> bool:
        """The catalog stores the photo as the encoder crops it, nothing else (what the batched GPU decoder makes)."""
        return not self.fit and not self.catalog_coarse

    @property
    def _photo_name(self) -> str:
        return "fitted photo" if self.fit else "photo"

    def query_views(self, image: Image.Image, keep: float = 1.0) -> list[Image.Image]:
        """The views of one query photo, in ``query_view_names`` order; ``keep``: see `crop_keep`."""
        photo = image.convert("RGB")
        angles = (self.turn_degrees, -self.turn_degrees) if self.turn_degrees else ()
        turned = [turned_view(photo, angle) for angle in angles]
        coarse = [coarse_view(photo, self.query_coarse)] if self.query_coarse else []
        return [self._photo(photo, keep), *turned, *coarse]

    def catalog_views(self, image: Image.Image, keep: float = 1.0) -> list[Image.Image]:
        """The views of one product photo the catalog stores, in ``catalog_view_names`` order."""
        photo = image.convert("RGB")
        coarse = [coarse_view(photo, self.catalog_coarse)] if self.catalog_coarse else []
        return [self._photo(photo, keep), *coarse]

    def penalties(self, query_views: int, catalog_views: int = 1) -> np.ndarray:
        """V×C distance added to each (query view, catalog view) pair's matches: none for photo × photo."""
        query = np.array([0.0] + [self.query_view_penalty] * (query_views - 1), dtype=np.float32)
        catalog = np.array([0.0] + [self.catalog_view_penalty] * (catalog_views - 1), dtype=np.float32)
        return query[:, None] + catalog[None, :]

    def photo_view(self, image: Image.Image, keep: float = 1.0) -> Image.Image:
        """The first view of queries and products alike: the photo, fitted or as the encoder crops it."""
        return self._photo(image.convert("RGB"), keep)

    def _photo(self, photo: Image.Image, keep: float) -> Image.Image:
        # ``photo`` is RGB already (the views convert once).
        return fitted_view(photo, keep) if self.fit else photo


SINGLE_VIEW = ViewPolicy(fit=False, turn_degrees=15.0, query_coarse=32, catalog_coarse=0,
                         query_view_penalty=0.03, catalog_view_penalty=0.0)
MULTI_VIEW = ViewPolicy(fit=True, turn_degrees=15.0, query_coarse=24, catalog_coarse=24,
                        query_view_penalty=0.0, catalog_view_penalty=0.02)
#: Views per robust query under the default policy (the catalog holds one vector per product).
VIEW_NAMES = SINGLE_VIEW.query_view_names


def embedding_model(spec: str, policy: ViewPolicy) -> str:
    """What products.embedding_model records for vectors encoder ``spec`` stored under ``policy``.

    The spec itself for the plain photo (SINGLE_VIEW, as ever), ``<spec>+multi-view`` for other
    catalog views: a catalog embedded under the other policy is then another model to search,
    which refuses it, since its vectors show other pixels.
    """
    return spec if policy.catalog_is_plain_photo else f"{spec}+multi-view"


def fused_distances(queries: np.ndarray, catalog: np.ndarray, policy: ViewPolicy = SINGLE_VIEW) -> np.ndarray:
    """Exact fused cosine distances, N×M, from N×V×D query views and an M×D or M×C×D catalog (in memory)."""
    if catalog.ndim == 2:
        catalog = catalog[:, None]
    penalties = policy.penalties(queries.shape[1], catalog.shape[1])
    per_pair = 1.0 - np.einsum("nvd,mcd->nvcm", queries, catalog) + penalties[None, :, :, None]
    return per_pair.min(axis=(1, 2))


def merge_views(
    per_view: Sequence[Sequence[tuple[K, float]]], k: int, penalties: Sequence[float] | np.ndarray | None = None
) -> list[tuple[K, float]]:
    """One query's top-k from the top-k (key, cosine distance) lists of its searches, nearest first.

    One list per searched (query view, catalog view) pair, with ``penalties`` in the same order
    (``policy.penalties(V, C).ravel()`` for lists in query-view-major order); by default one list
    per query view under ``SINGLE_VIEW``. Exact: a product in the fused top k is in the top k of
    the pair that gives its best distance.
    """
    if penalties is None:
        penalties = SINGLE_VIEW.penalties(len(per_view))[:, 0]
    best: dict[K, float] = {}
    for penalty, hits in zip(penalties, per_view, strict=True):
        for key, distance in hits:
            fused = distance + float(penalty)
            if fused < best.get(key, np.inf):
                best[key] = fused
    return sorted(best.items(), key=lambda item: item[1])[:k]


def fitted_view(image: Image.Image, keep: float) -> Image.Image:
    """The photo padded to a square, with margins the encoder's centre crop (``keep``) removes: all of it is seen."""
    side = max(image.size)
    padded = round(side / keep)
    canvas = Image.new("RGB", (padded, padded), BACKGROUND)
    canvas.paste(image, ((padded - image.width) // 2, (padded - image.height) // 2))
    return canvas


def turned_view(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=BACKGROUND)


def coarse_view(image: Image.Image, side: int) -> Image.Image:
    """The photo shrunk (box filter: a plain average) to ``side`` px on its longer side; smaller ones as they are."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)
