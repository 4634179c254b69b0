"""decode() on odd but valid images (embed) and broken ones (fail at once, with a reason)."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from prodvec import queue as jobs
from prodvec.errors import ImageError, ImageFailure
from prodvec.images.decode import decode
from prodvec.worker.pipeline import Worker, WorkerOptions

RED, BLUE = (220, 20, 20), (20, 20, 220)
TARGET = 224


def _split(size: tuple[int, int] = (40, 60), *, horizontal: bool = False) -> Image.Image:
    """Red top half and blue bottom half (red left, blue right when horizontal): shows which way is up."""
    width, height = size
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, width // 2, height) if horizontal else (0, 0, width, height // 2))
    return image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png16_rgb() -> bytes:
    """48-bit RGB PNG (PIL cannot write one): written by hand."""
    pixels = (np.asarray(_split()).astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return _png(pixels.shape[1], pixels.shape[0], 16, 2, zlib.compress(rows))


def _png_alpha() -> bytes:
    """Red/blue with a fully transparent (black-under-alpha) margin, which must come out white."""
    image = Image.new("RGBA", (60, 80), (0, 0, 0, 0))
    image.paste(_split().convert("RGBA"), (10, 10))
    return _encode(image, "PNG")


def _gif_two_frames() -> bytes:
    first = _split().quantize(colors=4)
    second = Image.new("RGB", (40, 60), (20, 200, 20)).quantize(colors=4)
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100)


#: name → (file suffix, bytes). Each is red above blue (or red left of blue, for the wide strip).
ODD_IMAGES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "cmyk_jpeg": (".jpg", lambda: _encode(_split().convert("CMYK"), "JPEG")),
    "progressive_jpeg": (".jpg", lambda: _encode(_split(), "JPEG", progressive=True)),
    "png_alpha": (".png", _png_alpha),
    "png_16bit_rgb": (".png", _png16_rgb),
    "palette_gif_first_frame": (".gif", _gif_two_frames),
    "wide_4000x3": (".png", lambda: _encode(_split((4000, 3), horizontal=True), "PNG")),
    "tall_3x4000": (".png", lambda: _encode(_split((3, 4000)), "PNG")),
    "large_jpeg_drafted": (".jpg", lambda: _encode(_split((1200, 1600)), "JPEG")),
}


def _exif_rotated(orientation: int) -> bytes:
    """What a camera stores: the pixels turned, plus the EXIF tag that says how to turn them back."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(_split().transpose(undo[orientation]), "JPEG", exif=exif.tobytes())


def _centre(mask: np.ndarray) -> np.ndarray:
    assert mask.sum() > 0, "colour missing from the decoded image"
    return np.argwhere(mask).mean(axis=0)  # (row, column)


def _assert_red_before_blue(image: Image.Image, *, horizontal: bool = False) -> None:
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    red = _centre((r > 150) & (g < 90) & (b < 90))
    blue = _centre((b > 150) & (r < 90) & (g < 90))
    axis = 1 if horizontal else 0
    assert red[axis] < blue[axis], f"red centre {red}, blue centre {blue}: image is not upright"


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_images_decode_upright_rgb(name: str) -> None:
    image = decode(ODD_IMAGES[name][1](), target_size=TARGET)
    _assert_red_before_blue(image, horizontal=name.startswith("wide"))


def test_extreme_strips_are_letterboxed_whole_not_blown_up() -> None:
    for size in [(4000, 3), (3, 4000)]:
        image = decode(_encode(Image.new("RGB", size, BLUE), "PNG"), target_size=TARGET)
        assert image.size == (TARGET, TARGET)  # not ~300000×224 after the encoder's resize
        assert (np.asarray(image) == BLUE).all(axis=-1).sum() >= TARGET - 2  # the whole strip, a line


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    image = decode(ODD_IMAGES["large_jpeg_drafted"][1](), target_size=TARGET)
    assert TARGET <= min(image.size) < 1200 / 2


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_comes_out_upright(orientation: int) -> None:
    image = decode(_exif_rotated(orientation), target_size=TARGET)
    assert image.size == (40, 60)
    _assert_red_before_blue(image)


def test_one_pixel_and_16bit_grey() -> None:
    pixel = decode(_encode(Image.new("RGB", (1, 1), RED), "PNG"), target_size=TARGET)
    assert (pixel.mode, pixel.size, pixel.getpixel((0, 0))) == ("RGB", (1, 1), RED)
    ramp = np.linspace(0, 65535, 32 * 16).reshape(16, 32).astype(np.uint16)  # 16-bit grey, dark → light
    grey = np.asarray(decode(_encode(Image.fromarray(ramp), "PNG"), target_size=TARGET))
    assert grey.shape == (16, 32, 3)
    assert grey[0, 0].tolist() == [0, 0, 0] and grey[-1, -1].tolist() == [255, 255, 255]  # scaled, not clipped


def _truncated(fmt: str) -> bytes:
    data = _encode(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    return data[: len(data) // 2]


#: name → (bytes, text the reason holds, the error's kind).
BROKEN: dict[str, tuple[Callable[[], bytes], str, ImageFailure]] = {
    "zero_bytes": (lambda: b"", "empty", "not_an_image"),
    "text_named_jpg": (lambda: b"hello, I am not a photo\n", "not an image", "not_an_image"),
    "html_page": (lambda: b"<!DOCTYPE html>\n<html><body>Not found</body></html>", "HTML page", "not_an_image"),
    "truncated_jpeg": (lambda: _truncated("JPEG"), "truncated", "corrupt"),
    "truncated_png": (lambda: _truncated("PNG"), "truncated", "corrupt"),
    "jpeg_magic_then_junk": (lambda: b"\xff\xd8\xff\xe0" + b"\x00junk" * 20, "image", "corrupt"),
    "bomb_header_100000x100000": (lambda: _png(100_000, 100_000, 1, 3, b""), "decompression bomb", "too_large"),
    "bomb_header_9000x9000": (lambda: _png(9_000, 9_000, 1, 0, b""), "9000x9000", "too_large"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_images_fail_permanently_with_a_reason(name: str) -> None:
    data, expected, kind = BROKEN[name]
    with pytest.raises(ImageError) as caught:
        decode(data(), target_size=TARGET)
    assert (caught.value.permanent, caught.value.kind) == (True, kind)
    assert expected in caught.value.reason


def test_pixel_limit_applies_to_real_images_too() -> None:
    with pytest.raises(ImageError, match="decompression bomb refused: image is 100x100") as caught:
        decode(_encode(_split((100, 100)), "PNG"), target_size=TARGET, max_pixels=5_000)
    assert (caught.value.permanent, caught.value.kind) == (True, "too_large")


def test_pixel_limit_counts_what_a_jpeg_decodes_to() -> None:
    # 1.9 Mpx on file, but DCT scaling decodes it at 1/4: a huge camera JPEG is no bomb.
    image = decode(ODD_IMAGES["large_jpeg_drafted"][1](), target_size=TARGET, max_pixels=1_000_000)
    _assert_red_before_blue(image)


@pytest.mark.parametrize("gpu_decode", [False, True], ids=["pil", "batched-jpeg"])
def test_worker_embeds_odd_images_and_fails_broken_ones_alone(
    conn, db_url, test_encoder, tmp_path: Path, gpu_decode: bool
) -> None:
    odd = {name: (suffix, build()) for name, (suffix, build) in ODD_IMAGES.items()}
    odd["exif_6"] = (".jpg", _exif_rotated(6))
    odd["one_pixel"] = (".png", _encode(Image.new("RGB", (1, 1), RED), "PNG"))
    broken = {name: (".jpg", BROKEN[name][0]()) for name in ("zero_bytes", "text_named_jpg", "truncated_jpeg")}
    for sku, (suffix, data) in {**odd, **broken}.items():
        path = tmp_path / f"{sku}{suffix}"
        path.write_bytes(data)
        conn.execute("INSERT INTO products (sku, image) VALUES (%s, %s)", (sku, str(path)))
    # Small batches, so broken images share batches with good ones; retried == 0: failed at once.
    # batched-jpeg: the GPU decode path (torchvision's CPU decoder here), its PIL fallbacks included.
    worker = Worker(db_url, test_encoder, WorkerOptions(batch_size=4, gpu_decode=gpu_decode))
    stats = worker.run(once=True)
    assert (stats.embedded, stats.failed, stats.retried) == (len(odd), len(broken), 0)
    # The metrics count failures by the kind each error was raised with.
    for kind, count in {"not_an_image": 2, "corrupt": 1}.items():
        assert worker.metrics.registry.get_sample_value("prodvec_failures_total", {"reason": kind}) == count
    embedded = {sku for (sku,) in conn.execute("SELECT sku FROM products WHERE embedding IS NOT NULL")}
    assert embedded == set(odd)
    failures = {failure.sku: failure for failure in jobs.failures(conn)}
    assert set(failures) == set(broken)
    for sku, failure in failures.items():
        assert failure.attempts == 1 and BROKEN[sku][1] in failure.reason
    # Truncated files stay refused only while nothing the worker imports turns this on.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
