"""Encoders: spec parsing, open_clip weights from a file / the hub / nowhere, and the offline
EfficientNet-Lite0 with its real ImageNet weights. CPU only; each model loads once per module."""
from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import timm
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

from prodvec.encode import (
    ACCEPTED_FORMS,
    WeightSource,
    load_encoder,
    open_clip_encoder,
    parse_spec,
    resolve_device,
    spec_dimensions,
)
from prodvec.encode.efficientnet_lite import (
    EfficientNetLiteEncoder,
    build_efficientnet_lite0,
    weights_file,
)
from prodvec.encode.open_clip_encoder import OpenClipEncoder
from prodvec.errors import ConfigError, QueryError, WeightsUnavailable

RANDOM_CLIP = "open_clip:ViT-B-32:none"
OFFLINE = "timm:efficientnet_lite0"
HUB_TAG = "laion2b_s34b_b79k"
ESPRESSO = 967  # ImageNet-1k class index of n07920052 'espresso'
UNREACHABLE_HUB = "http://127.0.0.1:9"  # discard port: connection refused at once


@pytest.fixture(scope="module")
def random_clip() -> OpenClipEncoder:
    encoder = load_encoder(RANDOM_CLIP, device="cpu")
    assert isinstance(encoder, OpenClipEncoder)
    return encoder


@pytest.fixture(scope="module")
def offline() -> EfficientNetLiteEncoder:
    encoder = load_encoder(OFFLINE, device="cpu")
    assert isinstance(encoder, EfficientNetLiteEncoder)
    return encoder


@pytest.fixture(scope="module")
def clip_checkpoint(random_clip: OpenClipEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random_clip's weights as a state_dict file (600 MB: written once per module)."""
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "vit-b-32.pt"
    torch.save(random_clip.model.state_dict(), checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hub_out_of_reach(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The hub refuses connections and the model cache is an empty folder (returned)."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", UNREACHABLE_HUB)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


# --- specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "normalised", "source"),
    [
        ("open_clip:ViT-B-32:laion2b_s34b_b79k", "open_clip:ViT-B-32:laion2b_s34b_b79k", WeightSource.HUB),
        (" open_clip:ViT-B/32:LAION2B-s34B-b79K ", "open_clip:ViT-B-32:laion2b_s34b_b79k", WeightSource.HUB),
        ("open_clip:ViT-B-32:NONE", "open_clip:ViT-B-32:none", WeightSource.RANDOM),
        ("open_clip:ViT-B-32:/ckpt/a:b.pt", "open_clip:ViT-B-32:/ckpt/a:b.pt", WeightSource.FILE),
        ("timm:efficientnet_lite0", "timm:efficientnet_lite0", WeightSource.PACKAGED),
    ],
)
def test_parse_spec_normalises(spec: str, normalised: str, source: WeightSource) -> None:
    parsed = parse_spec(spec)
    assert parsed.spec == normalised
    assert parsed.source is source


def test_relative_checkpoint_path_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_spec("open_clip:ViT-B-32:weights/vit.pt").weights == str(tmp_path / "weights" / "vit.pt")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "clip:ViT-B-32:openai",
        "open_clip:ViT-B-32",
        "open_clip::none",
        "open_clip:ViT-Z-99:none",
        "open_clip:ViT-B-32:laion2b_typo",
        "timm:resnet50",
    ],
)
def test_bad_spec_is_a_config_error_listing_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_spec(spec)
    assert ACCEPTED_FORMS in str(raised.value)


def test_spec_dimensions_do_not_load_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("spec_dimensions must not build a model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_loading)
    monkeypatch.setattr(timm, "create_model", no_loading)
    monkeypatch.setattr(torch, "load", no_loading)
    assert spec_dimensions("open_clip:ViT-B-32:laion2b_s34b_b79k") == 512
    assert spec_dimensions("open_clip:ViT-L-14:none") == 768
    assert spec_dimensions(OFFLINE) == 1280


def test_bad_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# --- open_clip, random weights -----------------------------------------------------------------


def test_random_open_clip_makes_unit_vectors(random_clip: OpenClipEncoder, pixels: torch.Tensor) -> None:
    assert (random_clip.spec, random_clip.dimensions, random_clip.input_size) == (RANDOM_CLIP, 512, 224)
    assert random_clip.supports_text
    vectors = random_clip.encode_images(pixels)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_random_open_clip_encodes_text(random_clip: OpenClipEncoder) -> None:
    vectors = random_clip.encode_text(["red running shoe", "leather handbag"])
    assert vectors.shape == (2, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert random_clip.encode_text([]).shape == (0, 512)


def test_preprocess_is_picklable_and_model_ready(random_clip: OpenClipEncoder) -> None:
    preprocess = pickle.loads(pickle.dumps(random_clip.preprocess))  # cheap: carries no model
    pixels = preprocess(Image.fromarray(skimage.data.astronaut()))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
    assert random_clip.encode_images(pixels.unsqueeze(0)).shape == (1, 512)


def test_load_encoder_is_memoised(random_clip: OpenClipEncoder) -> None:
    assert load_encoder(" open_clip:ViT-B/32:none", device="cpu") is random_clip


def test_random_weights_are_the_same_in_every_load(random_clip: OpenClipEncoder, pixels: torch.Tensor) -> None:
    """Drawn from a fixed seed, whatever the process's generator holds (torch seeds each process
    differently): a catalog embedded by one process is searched by others. The process's own
    random stream is left as it was."""
    torch.manual_seed(12345)
    expected_next = torch.rand(1)
    torch.manual_seed(12345)
    again = open_clip_encoder.load_open_clip(parse_spec(RANDOM_CLIP), torch.device("cpu"))  # not the memoised one
    assert again is not random_clip and torch.equal(torch.rand(1), expected_next)
    np.testing.assert_array_equal(again.encode_images(pixels), random_clip.encode_images(pixels))


def test_random_weights_warn_once_per_spec(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def factory_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stop after the warning")

    monkeypatch.setattr(open_clip_encoder, "_warned_random", set())
    monkeypatch.setattr(open_clip, "create_model_and_transforms", factory_fails)
    spec = parse_spec("open_clip:ViT-B-16:none")
    with caplog.at_level(logging.WARNING, logger=open_clip_encoder.__name__):
        for _ in range(2):
            with pytest.raises(WeightsUnavailable):
                open_clip_encoder.load_open_clip(spec, torch.device("cpu"))
    warnings = [r for r in caplog.records if r.name == open_clip_encoder.__name__ and "RANDOM" in r.message]
    assert len(warnings) == 1 and "meaningless" in warnings[0].getMessage()


# --- open_clip, real loading paths (checkpoint file, hub) ----------------------------------------


def test_checkpoint_file_round_trip(
    random_clip: OpenClipEncoder, pixels: torch.Tensor, clip_checkpoint: Path
) -> None:
    loaded = load_encoder(f"open_clip:ViT-B-32:{clip_checkpoint}", device="cpu")
    assert loaded.spec == f"open_clip:ViT-B-32:{clip_checkpoint}"
    np.testing.assert_array_equal(loaded.encode_images(pixels), random_clip.encode_images(pixels))
    np.testing.assert_array_equal(loaded.encode_text(["blue jeans"]), random_clip.encode_text(["blue jeans"]))


def _assert_says_how_to_fix(error: WeightsUnavailable) -> None:
    message = str(error)
    assert "Fix:" in message and "PRODVEC_MODEL=open_clip:ViT-B-32:/path/to/checkpoint.pt" in message
    assert "PRODVEC_MODEL=timm:efficientnet_lite0" in message


def test_missing_checkpoint_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="no checkpoint file") as raised:
        load_encoder(f"open_clip:ViT-B-32:{tmp_path / 'absent.pt'}", device="cpu")
    _assert_says_how_to_fix(raised.value)


def test_corrupt_checkpoint_file_says_how_to_fix(tmp_path: Path) -> None:
    checkpoint = tmp_path / "corrupt.pt"
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsUnavailable) as raised:
        load_encoder(f"open_clip:ViT-B-32:{checkpoint}", device="cpu")
    _assert_says_how_to_fix(raised.value)


def test_unreachable_hub_fails_fast_and_says_how_to_fix(hub_out_of_reach: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="unreachable") as raised:
        load_encoder(f"open_clip:ViT-B-32:{HUB_TAG}", device="cpu")
    # Not huggingface_hub's ~46 s of retries; 30 s leaves room for a loaded machine.
    assert time.monotonic() - started < 30
    assert f"weights '{HUB_TAG}'" in str(raised.value)
    _assert_says_how_to_fix(raised.value)
    assert hub_constants.HF_HUB_OFFLINE is False  # the hub is tried again next time


def test_unreachable_hub_still_loads_cached_weights(
    random_clip: OpenClipEncoder, pixels: torch.Tensor, clip_checkpoint: Path, hub_out_of_reach: Path
) -> None:
    # Lay the weights out as huggingface_hub's cache does after a download of this tag
    # (snapshot entries are symlinks there too).
    repo_id = open_clip.get_pretrained_cfg("ViT-B-32", HUB_TAG)["hf_hub"].strip("/")
    repo = hub_out_of_reach / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_pytorch_model.bin").symlink_to(clip_checkpoint)

    cached = load_encoder(f"open_clip:ViT-B-32:{HUB_TAG}", device="cpu")
    np.testing.assert_array_equal(cached.encode_images(pixels), random_clip.encode_images(pixels))


# --- offline EfficientNet-Lite0, real weights ----------------------------------------------------


def test_offline_encoder_makes_unit_vectors(offline: EfficientNetLiteEncoder, pixels: torch.Tensor) -> None:
    assert (offline.spec, offline.dimensions, offline.input_size) == (OFFLINE, 1280, 224)
    assert not offline.supports_text
    vectors = offline.encode_images(pixels)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_offline_encoder_holds_the_packaged_weights(offline: EfficientNetLiteEncoder) -> None:
    packaged = torch.load(weights_file(), map_location="cpu", weights_only=True)
    # The packaged file's order, less BatchNorm counters and the ImageNet classifier (_fc).
    expected = [t for k, t in packaged.items() if not (k.endswith("num_batches_tracked") or k.startswith("_fc."))]
    loaded = [t for k, t in offline.model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(expected) == 245
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected, strict=True))
    assert torch.equal(offline.model.conv_stem.weight, packaged["_conv_stem.weight"])


def test_offline_weights_classify_a_real_photo(offline: EfficientNetLiteEncoder) -> None:
    classifier = build_efficientnet_lite0(with_classifier=True)
    pixels = offline.preprocess(Image.fromarray(skimage.data.coffee())).unsqueeze(0)
    with torch.inference_mode():
        probabilities = classifier(pixels).softmax(dim=-1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert timm.data.ImageNetInfo().index_to_description(ESPRESSO) == "espresso"
    assert float(probabilities[ESPRESSO]) > 0.5  # 0.95 measured: real weights, not luck


def test_offline_preprocess_accepts_grayscale_and_alpha(offline: EfficientNetLiteEncoder) -> None:
    gray = Image.fromarray(skimage.data.camera())
    rgba = Image.new("RGBA", (300, 200), (200, 30, 30, 128))
    for image in (gray, rgba):
        assert offline.preprocess(image).shape == (3, 224, 224)


def test_offline_encoder_refuses_text(offline: EfficientNetLiteEncoder) -> None:
    with pytest.raises(QueryError, match="timm:efficientnet_lite0 is image-only; use an open_clip model"):
        offline.encode_text(["espresso"])
