"""Stage 2 on the GPU: batched nvJPEG decode, resize and normalise, for the common case.

On a GPU the encoder outruns PIL by far (ViT-B-32 bf16 ~34k img/s on an H100 vs PIL's
~1-2k img/s on 16 cores), so decoding sets the pace. torchvision's batched
``decode_jpeg(..., device='cuda')`` decodes plain JPEGs on the GPU several times faster;
the encoder's own Resize/CenterCrop then run on the decoded tensors there.

Only what the GPU path reproduces exactly goes this way (``batchable``): upright (no EXIF
turn) RGB or grey JPEGs of sane size and aspect. CMYK, EXIF-rotated, strips, other formats
and anything the GPU decoder rejects go through PIL (decode.py) like on a CPU. A batched
decode fails as a whole on one bad file, so a failed batch is retried image by image and
only the rejects fall back: one broken upload never costs the batch.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg

from prodvec.encode import Encoder
from prodvec.images.decode import MAX_ASPECT_RATIO, MAX_PIXELS

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which needs FFmpeg
# libraries a plain pip install does not bring; decode_jpeg still works and is what we need.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

#: Transform steps that are no-ops on an RGB uint8 tensor the GPU path has already made.
_PASS_THROUGH = ("MaybeConvertMode", "MaybeToTensor", "ToTensor")
_EXIF_ORIENTATION = 0x0112
#: Photos resized in one call at most: the resize works in float, 4x the decoded bytes
#: (64 photos of 800x800 px: ~0.5 GB), so a 512-photo batch is not resized in one go.
RESIZE_CHUNK = 64


@dataclass(frozen=True)
class TensorTransform:
    """The encoder's preprocess, redone on uint8 image tensors: its own geometric steps
    (Resize, CenterCrop: torchvision modules accept batched tensors) and its Normalize."""

    geometric: tuple[torch.nn.Module, ...]
    normalize: transforms.Normalize

    @classmethod
    def of(cls, encoder: Encoder) -> TensorTransform | None:
        """None when the preprocess holds a step we cannot redo on tensors (then PIL does it all)."""
        steps = getattr(encoder.preprocess, "transforms", None)
        if steps is None:
            return None
        geometric: list[torch.nn.Module] = []
        normalize = None
        for step in steps:
            if isinstance(step, (transforms.Resize, transforms.CenterCrop)) and normalize is None:
                geometric.append(step)
            elif isinstance(step, transforms.Normalize):
                normalize = step
            elif type(step).__name__ in _PASS_THROUGH or _is_rgb_conversion(step):
                continue
            else:
                return None
        return cls(tuple(geometric), normalize) if normalize is not None else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×H×W uint8 (one size) → N×3×S×S normalised float, on the images' device."""
        for step in self.geometric:
            images = step(images)
        return self.normalize(images.float().div_(255.0))


def _is_rgb_conversion(step: object) -> bool:
    # Encoders add a plain "to RGB" function (ours: _to_rgb; open_clip: _convert_to_rgb).
    return callable(step) and "rgb" in getattr(step, "__name__", "").lower()


def batchable(data: bytes) -> bool:
    """Is this a JPEG the GPU path decodes exactly as PIL would? Reads only the header."""
    # A JPEG ends with its EOI marker. nvJPEG decodes a cut-off file without complaint (grey
    # where data is missing), where PIL refuses it: such files must take PIL's path.
    if not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9")):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return (
                image.format == "JPEG"
                and image.mode in ("RGB", "L")
                and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
                and width * height <= MAX_PIXELS
                and max(width, height) <= MAX_ASPECT_RATIO * min(width, height)
            )
    except Exception:
        return False


class GpuJpegDecoder:
    """JPEG bytes → model-ready pixels on ``device`` (CUDA; the CPU works too, for tests)."""

    def __init__(self, transform: TensorTransform, device: torch.device) -> None:
        self.transform = transform
        self.device = device

    @classmethod
    def for_encoder(
        cls, encoder: Encoder, wanted: bool | None = None, *, encoder_crop_only: bool = True
    ) -> GpuJpegDecoder | None:
        """The decoder for the encoder's device and transform; None where PIL decodes everything:
        not wanted (None = wanted on CUDA), a preprocess step tensors cannot redo, or pixels
        other than the encoder's own crop wanted (``encoder_crop_only`` False: catalog views)."""
        if not encoder_crop_only or not (wanted if wanted is not None else encoder.device.type == "cuda"):
            return None
        transform = TensorTransform.of(encoder)
        return cls(transform, encoder.device) if transform is not None else None

    def decode(self, jpegs: list[bytes]) -> list[torch.Tensor | None]:
        """One 3×S×S tensor per JPEG, or None for a file the GPU decoder rejects (PIL decides)."""
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
        try:
            decoded: list[torch.Tensor | None] = list(self._decode(encoded))
        except RuntimeError:
            decoded = [self._decode_one(data) for data in encoded]
        return self._transform(decoded)

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device) if encoded else []

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode([data])[0]
        except RuntimeError:
            return None

    def _transform(self, decoded: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        # Same-sized photos (a catalog's usual case) resize together, one kernel per group.
        by_size: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(decoded):
            if image is not None:
                by_size.setdefault(tuple(image.shape), []).append(position)
        pixels: list[torch.Tensor | None] = [None] * len(decoded)
        with torch.inference_mode():
            for same_size in by_size.values():
                for start in range(0, len(same_size), RESIZE_CHUNK):
                    positions = same_size[start : start + RESIZE_CHUNK]
                    group = self.transform(torch.stack([decoded[p] for p in positions]))  # type: ignore[misc]
                    for position, image in zip(positions, group, strict=True):
                        pixels[position] = image
        return pixels
