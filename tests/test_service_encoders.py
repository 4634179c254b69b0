"""The encoders a server holds (prodvec/service/encoders.py): the catalog's models loaded ahead of
their activation, one that cannot load said before anyone activates it, dropped ones let go;
PRODVEC_PRELOAD_MODELS=0 holds only the model in use."""
from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import NARROW_MODEL, TEST_MODEL

from prodvec.service import encoders as encoders_module
from prodvec.service.encoders import Encoders
from prodvec.service.settings import service_settings

MISSING = "open_clip:ViT-B-32:/nowhere/weights.pt"


def _held(encoders: Encoders) -> list[tuple[str, bool]]:
    return [(state.spec, state.loaded) for state in encoders.states()]


def _single(*specs: str) -> list[tuple[str, str]]:
    return [(spec, "single") for spec in specs]


def test_the_catalogs_models_are_loaded_ahead_and_dropped_ones_let_go(test_encoder: Any) -> None:
    encoders = Encoders(test_encoder, preload=True)
    assert _held(encoders) == [(TEST_MODEL, True)]
    # A model listed under both catalog views is listed twice, and one encoder serves both.
    encoders.refresh([*_single(TEST_MODEL, NARROW_MODEL, MISSING), (NARROW_MODEL, "multi")], in_use=TEST_MODEL)
    assert [(state.spec, state.catalog_views, state.loaded) for state in encoders.states()] == [
        (TEST_MODEL, "single", True), (NARROW_MODEL, "single", True), (MISSING, "single", False),
        (NARROW_MODEL, "multi", True)]
    problem = encoders.states()[2].problem
    assert problem is not None and "no checkpoint file at /nowhere/weights.pt" in problem
    narrow = encoders.get(NARROW_MODEL)  # what an activation switches to: the encoder already loaded
    assert narrow.spec == NARROW_MODEL and narrow.dimensions == 256 and encoders.get(NARROW_MODEL) is narrow
    # Dropped from the catalog: let go, except the model searches still encode with.
    encoders.refresh(_single(NARROW_MODEL), in_use=TEST_MODEL)
    assert _held(encoders) == [(NARROW_MODEL, True), (TEST_MODEL, True)]
    encoders.refresh(_single(NARROW_MODEL), in_use=NARROW_MODEL)
    assert _held(encoders) == [(NARROW_MODEL, True)]


def test_without_preloading_only_the_model_in_use_is_held(test_encoder: Any) -> None:
    encoders = Encoders(test_encoder, preload=False)
    encoders.refresh(_single(TEST_MODEL, NARROW_MODEL), in_use=TEST_MODEL)
    assert _held(encoders) == [(TEST_MODEL, True), (NARROW_MODEL, False)]
    assert encoders.get(NARROW_MODEL).dimensions == 256  # loaded when it becomes active
    encoders.refresh(_single(TEST_MODEL, NARROW_MODEL), in_use=NARROW_MODEL)
    assert _held(encoders) == [(TEST_MODEL, False), (NARROW_MODEL, True)]


def test_preloading_is_on_unless_turned_off() -> None:
    assert service_settings({}).preload_models
    assert not service_settings({"PRODVEC_PRELOAD_MODELS": "0"}).preload_models


def test_a_model_that_failed_to_load_is_tried_again_minutes_later(
    test_encoder: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at every look (each would log the failure again), but its weights may come later."""
    encoders = Encoders(test_encoder, preload=True)
    with caplog.at_level(logging.WARNING, logger="prodvec.service"):
        for _ in range(2):
            encoders.refresh(_single(TEST_MODEL, MISSING), in_use=TEST_MODEL)
        assert sum(MISSING in record.message for record in caplog.records) == 1
        monkeypatch.setattr(encoders_module, "RETRY_AHEAD_SECONDS", 0.0)
        encoders.refresh(_single(TEST_MODEL, MISSING), in_use=TEST_MODEL)
        assert sum(MISSING in record.message for record in caplog.records) == 2
    problem = encoders.states()[1].problem
    assert problem is not None and "tries again every" in problem
