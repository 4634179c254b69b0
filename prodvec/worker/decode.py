"""Stage 2: bytes → an upright RGB PIL image, ready for the encoder's transform.

Odd but valid images must work: CMYK and progressive JPEG, PNG with alpha, 16-bit PNG,
palette GIF (first frame), 1×1 pixels, extreme aspect ratios, EXIF-rotated photos.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from prodvec.errors import ImageError

#: Larger images are refused as decompression bombs (PIL's own default is 89 Mpx, warning only).
MAX_PIXELS = 64_000_000


def decode(data: bytes, *, target_size: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode, at a reduced scale where JPEG allows it, and return RGB at ≥ target_size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} pixels, over the {max_pixels}-pixel limit", permanent=True
                )
            # JPEG DCT scaling: decode straight to ≥ target size instead of full resolution.
            image.draft("RGB", (target_size, target_size))
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(_reason(exc), permanent=True) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise ImageError(f"corrupt image: {exc}", permanent=True) from None
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (a product shot's usual background)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits rather than clip.
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (no decoder recognises the data)"
    return f"decompression bomb refused: {exc}"
