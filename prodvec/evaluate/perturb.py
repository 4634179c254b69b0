"""Real-world photo faults, applied to clean product photos to test how robust search is.

Each one is a plain function (image, rng) → image, deterministic for a given rng, with the
strength fixed here so results are comparable between runs, models and catalogs. Strengths are
set relative to the photo's size, so they mean the same thing on a 100 px or a 1000 px photo.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Perturbation = Callable[[Image.Image, np.random.Generator], Image.Image]

#: Occluder side as a fraction of the photo's side: a hand, price tag or sticker over ~9% of it.
OCCLUDER_SIDE = 0.3
#: Rotation range in degrees (either way): a photo taken at an angle.
ROTATION_DEGREES = (10.0, 25.0)
#: Pixel value v (0..1) → gain · v^gamma, per channel (R, G, B): dim warm indoor light ...
DARK_LIGHT = ((0.55, 0.5, 0.4), 1.4)
#: ... and washed-out bright light (shadows lifted to FLOOR, cool cast).
BRIGHT_LIGHT = ((0.95, 1.0, 1.0), 0.6)
BRIGHT_FLOOR = 0.35
#: A thumbnail: the photo shrunk to this many pixels on its longer side.
SMALL_SIDE = 20
#: Sensor noise: Gaussian, per pixel and channel, standard deviation on the 0..255 scale.
NOISE_SIGMA = 30.0
#: Heavy JPEG compression quality (1..95).
JPEG_QUALITY = 8
#: Off-centre crop: keep this fraction of each side, pushed towards a random corner.
CROP_KEEP = 0.75
#: Defocus: Gaussian blur radius as a fraction of the photo's longer side.
BLUR_RADIUS = 0.012


def occlusion(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid block of a random colour over part of the product (not only the background)."""
    width, height = image.size
    side = round(OCCLUDER_SIDE * min(width, height))
    # Its centre stays in the middle half of the photo, where the product is.
    cx = rng.uniform(0.25, 0.75) * width
    cy = rng.uniform(0.25, 0.75) * height
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    out = image.copy()
    ImageDraw.Draw(out).rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
    return out


def rotation(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(*ROTATION_DEGREES) * rng.choice((-1, 1))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))


def darker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _light(image, *DARK_LIGHT, floor=0.0)


def brighter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _light(image, *BRIGHT_LIGHT, floor=BRIGHT_FLOOR)


def small(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Returned at its small size: upscaling is the search side's job, as with a real thumbnail."""
    scale = SMALL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, NOISE_SIGMA, size=pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    with Image.open(io.BytesIO(buffer.getvalue())) as compressed:
        return compressed.convert("RGB")


def off_centre(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    keep_w, keep_h = round(width * CROP_KEEP), round(height * CROP_KEEP)
    # Pushed at least half-way towards a corner, so the product is visibly off-centre and cut.
    left = round(rng.choice((rng.uniform(0, 0.25), rng.uniform(0.75, 1))) * (width - keep_w))
    top = round(rng.choice((rng.uniform(0, 0.25), rng.uniform(0.75, 1))) * (height - keep_h))
    return image.crop((left, top, left + keep_w, top + keep_h))


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS * max(image.size)))


def _light(image: Image.Image, gains: tuple[float, float, float], gamma: float, *, floor: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    lit = floor + (1 - floor) * np.asarray(gains, dtype=np.float32) * pixels**gamma
    return Image.fromarray((np.clip(lit, 0, 1) * 255).round().astype(np.uint8))


#: In report order.
PERTURBATIONS: dict[str, Perturbation] = {
    "occlusion": occlusion,
    "rotation": rotation,
    "darker": darker,
    "brighter": brighter,
    "small": small,
    "noise": noise,
    "jpeg": jpeg,
    "off_centre": off_centre,
    "blur": blur,
}


#: One line per fault, with its strength, for reports.
DESCRIPTIONS: dict[str, str] = {
    "occlusion": f"a block of random colour, {OCCLUDER_SIDE:.0%} of the photo's side, centred in its middle half",
    "rotation": f"turned {ROTATION_DEGREES[0]:g}–{ROTATION_DEGREES[1]:g}° either way, white corners",
    "darker": f"dim warm light: channel gains {DARK_LIGHT[0]}, gamma {DARK_LIGHT[1]}",
    "brighter": (f"washed-out cool light: shadows lifted to {BRIGHT_FLOOR:.0%}, gains {BRIGHT_LIGHT[0]}, "
                 f"gamma {BRIGHT_LIGHT[1]}"),
    "small": f"a thumbnail {SMALL_SIDE} px on its longer side",
    "noise": f"Gaussian sensor noise, σ = {NOISE_SIGMA:g} of 255, per pixel and channel",
    "jpeg": f"JPEG at quality {JPEG_QUALITY}",
    "off_centre": f"a crop keeping {CROP_KEEP:.0%} of each side, pushed towards a random corner",
    "blur": f"Gaussian blur, radius {BLUR_RADIUS:.1%} of the longer side",
}


def perturb(image: Image.Image, name: str, seed: int) -> Image.Image:
    """``image`` with perturbation ``name``; the same (name, seed) always gives the same result."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}: choose from {', '.join(PERTURBATIONS)}")
    rng = np.random.default_rng([seed, list(PERTURBATIONS).index(name)])
    return PERTURBATIONS[name](image.convert("RGB"), rng)
