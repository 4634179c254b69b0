"""The batched JPEG path (GPU on CUDA; torchvision's CPU decoder here): same pixels as PIL's,
only plain JPEGs taken, one bad file isolated from its batch."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from prodvec.encode import load_encoder
from prodvec.images.decode import decode
from prodvec.worker.gpu_decode import GpuJpegDecoder, TensorTransform, batchable

CPU = torch.device("cpu")
#: On a machine with CUDA the same checks run on nvJPEG too.
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _photo(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A product-like photo: white ground, a few coloured shapes (smooth, so JPEG keeps it)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        box = (x0, y0, x0 + int(rng.integers(width // 8, width // 2)), y0 + int(rng.integers(height // 8, height // 2)))
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image.convert(mode)


def _jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **options)
    return out.getvalue()


def _exif_turned() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(_photo((60, 40)), exif=exif.tobytes())


@pytest.fixture(scope="module", params=["open_clip:ViT-B-32:none", "timm:efficientnet_lite0"])
def encoder(request: pytest.FixtureRequest):
    return load_encoder(request.param, "cpu")


def test_both_encoders_transforms_can_be_redone_on_tensors(encoder) -> None:
    transform = TensorTransform.of(encoder)
    assert transform is not None
    assert [type(step).__name__ for step in transform.geometric] == ["Resize", "CenterCrop"]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("800px", _jpeg(_photo((800, 800)))),
        ("portrait_600x900", _jpeg(_photo((600, 900), seed=1))),
        ("grey", _jpeg(_photo((300, 200), "L", seed=2))),
        ("progressive", _jpeg(_photo((400, 300), seed=3), progressive=True)),
        ("small_50x70", _jpeg(_photo((50, 70), seed=4))),
    ],
)
@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_batched_pixels_match_the_pil_path(encoder, name: str, data: bytes, device: torch.device) -> None:
    assert batchable(data)
    decoder = GpuJpegDecoder(TensorTransform.of(encoder), device)
    (batched,) = decoder.decode([data])
    pil = encoder.preprocess(decode(data, target_size=encoder.input_size))
    assert batched is not None and batched.device.type == device.type
    batched = batched.cpu()
    assert batched.shape == pil.shape
    # PIL decodes big JPEGs at a reduced DCT scale first: the same picture, a few levels apart.
    assert (batched - pil).abs().mean() < 0.05, name
    assert np.corrcoef(batched.flatten(), pil.flatten())[0, 1] > 0.99, name


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_a_bad_file_fails_alone_not_its_batch(test_encoder, device: torch.device) -> None:
    good = [_jpeg(_photo((120, 90), seed=seed)) for seed in range(3)]
    whole = _jpeg(_photo((320, 240), seed=9))
    truncated = whole[: len(whole) // 2]
    # nvJPEG decodes a cut-off file without complaint, so it must never be batched...
    assert not batchable(truncated)
    decoder = GpuJpegDecoder(TensorTransform.of(test_encoder), device)
    # ... and one the decoder rejects fails alone. (Junk stands in for it here: which damaged
    # JPEGs a decoder rejects varies between libjpeg and nvJPEG versions.)
    broken = b"\xff\xd8\xff" + b"\x00not a jpeg" * 40 + b"\xff\xd9"
    pixels = decoder.decode([good[0], broken, good[1], good[2]])
    assert [p is None for p in pixels] == [False, True, False, False]
    alone = decoder.decode([good[1]])[0]
    assert torch.equal(pixels[2], alone)  # same result as if decoded without the bad file


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("cmyk", _jpeg(_photo((60, 40)).convert("CMYK"))),
        ("exif_turned", _exif_turned()),
        ("png", (lambda out: (_photo((60, 40)).save(out, "PNG"), out.getvalue())[1])(io.BytesIO())),
        ("strip_500x20", _jpeg(_photo((500, 20)))),
        ("magic_then_junk", b"\xff\xd8\xff\xe0" + b"\x00junk" * 20),
        ("empty", b""),
    ],
)
def test_only_plain_jpegs_are_batched(name: str, data: bytes) -> None:
    # Everything else takes the PIL path, which turns, composites and letterboxes as it should.
    assert not batchable(data), name
