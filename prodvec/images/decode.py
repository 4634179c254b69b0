"""Stage 2: bytes → an upright RGB PIL image, ready for the encoder's transform.

Odd but valid images must work: CMYK and progressive JPEG, PNG with alpha, 16-bit PNG,
palette GIF (first frame), 1×1 pixels, extreme aspect ratios, EXIF-rotated photos.
Truncated files are refused (PIL's LOAD_TRUNCATED_IMAGES stays off): a cut-off file is
far more often a broken upload than a photo worth embedding with a grey bottom half.
"""
from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from prodvec.errors import ImageError

#: Images that would decode to more pixels are refused as decompression bombs. PIL's own
#: refusal at open (DecompressionBombError, over 179 Mpx on file) still applies on top.
MAX_PIXELS = 64_000_000
#: Wider (or taller) than this is letterboxed: the encoder's resize-shortest-side-then-crop
#: would otherwise blow a 4000×3 strip up to ~300000×224 pixels and keep only its middle.
MAX_ASPECT_RATIO = 4.0


def decode(data: bytes, *, target_size: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode (at a reduced scale where JPEG allows, never below target_size) to upright RGB."""
    # PIL's DecompressionBombWarning is left a warning (our limit decides): turning it into an
    # error with warnings.catch_warnings() is not thread-safe, and decode runs in a pool.
    try:
        image = Image.open(io.BytesIO(data))
        # JPEG DCT scaling: decode straight to ≥ target size instead of full resolution.
        image.draft("RGB", (target_size, target_size))
        # Checked after draft: what matters is the memory decoding takes, and a 100 Mpx
        # camera JPEG decodes at 1/8 scale just fine. Nothing is decompressed yet.
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"decompression bomb refused: image is {width}x{height} pixels, over the {max_pixels}-pixel limit",
                kind="too_large", permanent=True,
            )
        image.load()  # first frame only (GIF, APNG, TIFF)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(_not_an_image(data), kind="not_an_image", permanent=True) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}", kind="too_large", permanent=True) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt image: {exc}", kind="corrupt", permanent=True) from None
    return normalize(image, target_size=target_size)


def normalize(image: Image.Image, *, target_size: int) -> Image.Image:
    """What every image goes through before the encoder's transform, stored or query alike:
    EXIF orientation applied, RGB on white, extreme strips letterboxed."""
    return _bounded_aspect(to_rgb(ImageOps.exif_transpose(image)), target_size)


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


def _bounded_aspect(image: Image.Image, target_size: int) -> Image.Image:
    """Letterbox an extreme strip, whole, onto a white target_size square."""
    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image
    scale = target_size / max(width, height)
    # At least one pixel thick: ImageOps.contain would round a 4000×3 strip to nothing.
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", (target_size, target_size), (255, 255, 255))
    offset = ((target_size - size[0]) // 2, (target_size - size[1]) // 2)
    canvas.paste(image.resize(size, Image.Resampling.BICUBIC), offset)
    return canvas


def _not_an_image(data: bytes) -> str:
    if not data:
        return "not an image: the file is empty (0 bytes)"
    if data[:256].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "not an image: got an HTML page (an error or login page at the image URL?)"
    return f"not an image (no decoder recognises data starting {data[:8]!r})"
