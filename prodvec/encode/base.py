"""What every image encoder offers the worker and the search API, and the shared inference path."""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prodvec.errors import QueryError

#: PIL image → CHW float tensor. A plain transform object, not a bound method, so the decode
#: pool can call (or pickle) it without touching the model.
Preprocess = Callable[[Image.Image], torch.Tensor]


class Encoder(ABC):
    """A loaded model that turns preprocessed images (and maybe texts) into unit-length vectors.

    ``spec`` is the normalised model spec, stored next to every embedding it makes.
    """

    supports_text: bool = False

    def __init__(
        self, *, spec: str, dimensions: int, input_size: int, device: torch.device, preprocess: Preprocess
    ) -> None:
        self.spec = spec
        self.dimensions = dimensions
        self.input_size = input_size
        self.device = device
        self.preprocess = preprocess

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, device={str(self.device)!r})"

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """N×3×S×S preprocessed pixels (stacked ``preprocess`` outputs) → N×D float32 unit rows."""
        if batch.ndim != 4:
            raise ValueError(
                f"expected an N×3×H×W batch, got shape {tuple(batch.shape)}: torch.stack the preprocess outputs"
            )
        with torch.inference_mode(), self._autocast():
            features = self._image_features(batch.to(self.device, non_blocking=True))
        return unit_rows(features)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts → N×D float32 unit rows in the image space; only models with a text tower can."""
        raise QueryError(f"model {self.spec} is image-only; use an open_clip model for text queries")

    @abstractmethod
    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) N×D features of a batch already on the device."""

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        # bf16 on CUDA for throughput; CPUs stay fp32, where bf16 is slow and gains nothing.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalise in fp32: bf16 rounding would leave norms visibly off 1.
    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)
