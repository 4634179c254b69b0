"""The query encoder under concurrency: queries that wait together share one forward pass, and
past the queue limit a query is refused at once with 503 + Retry-After while the admitted ones
and the searches that need no encoder are answered.

The model's forward passes are counted (and the first one held back, so that the others
arrive while it runs) by wrapping the test encoder's ``encode_images``: a count taken outside
the batcher, never the batcher's own."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from test_service import (
    ServiceCatalog,
    png_bytes,
    running,
    service_catalog,  # noqa: F401  # a fixture
    settings_for,
    upload,
)

from prodvec.service.app import create_app

SKUS = [f"FM-{number:05d}" for number in range(1, 9)]


class HeldPasses:
    """Counts encode_images calls (and their batch sizes); the first waits for ``release``."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: Any) -> Any:
        self.batches.append(len(batch))
        self.entered.set()
        assert self.release.wait(120), "the test never released the encoder"
        return self.original(batch)


@pytest.fixture
def held(test_encoder: Any, monkeypatch: pytest.MonkeyPatch) -> HeldPasses:
    passes = HeldPasses(test_encoder.encode_images)
    monkeypatch.setattr(test_encoder, "encode_images", passes)
    return passes


@contextmanager
def server(service_catalog: ServiceCatalog, test_encoder: Any, **changes: Any) -> Iterator[tuple[str, Any]]:
    app = create_app(settings_for(service_catalog.url, **changes), encoder=test_encoder)
    with running(app) as url:
        yield url, app.state.service.batcher


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def search_photo(url: str, catalog: ServiceCatalog, sku: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=120) as client:
        return upload(client, png_bytes(catalog.photo(sku)), robust="false", k=3)


def test_concurrent_queries_share_forward_passes(service_catalog: ServiceCatalog, test_encoder: Any,
                                                 held: HeldPasses):
    with server(service_catalog, test_encoder, queue_limit=64, max_batch=32) as (url, batcher), \
            ThreadPoolExecutor(len(SKUS)) as pool:
        first = pool.submit(search_photo, url, service_catalog, SKUS[0])
        assert held.entered.wait(120)
        others = [pool.submit(search_photo, url, service_catalog, sku) for sku in SKUS[1:]]
        wait_until(lambda: batcher.queued == len(SKUS), "every query waits for the encoder")
        held.release.set()
        answers = [first.result(), *(future.result() for future in others)]
    for sku, answer in zip(SKUS, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["hits"][0]["sku"] == sku  # each query got its own vector back
    # Eight queries, two passes: the one held, then the seven that queued meanwhile, together.
    assert held.batches == [1, len(SKUS) - 1]


def test_past_the_queue_limit_queries_get_503_with_retry_after(service_catalog: ServiceCatalog, test_encoder: Any,
                                                              held: HeldPasses):
    limit, extra = 3, 6
    with server(service_catalog, test_encoder, queue_limit=limit) as (url, batcher), \
            ThreadPoolExecutor(limit + extra) as pool:
        first = pool.submit(search_photo, url, service_catalog, SKUS[0])
        assert held.entered.wait(120)
        rest: list[Future[httpx.Response]] = [pool.submit(search_photo, url, service_catalog, sku)
                                              for sku in (SKUS * 2)[1 : limit + extra]]
        # The refused ones are answered while the encoder is still held: no waiting in line.
        wait_until(lambda: sum(f.done() for f in rest) == extra, "the queries past the limit are refused")
        refused = [f.result() for f in rest if f.done()]
        with httpx.Client(base_url=url, timeout=120) as client:  # no encoder needed: answered meanwhile
            assert client.post("/v1/search", json={"sku": "FM-00002"}).status_code == 200
            status = client.get("/v1/status").json()["encoder"]
        held.release.set()
        admitted = [first.result(), *(f.result() for f in rest if f.result() not in refused)]
    assert status["queued"] == limit and status["limit"] == limit
    for response in refused:
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert "busy" in response.json()["error"]
    assert [response.status_code for response in admitted] == [200] * limit
    assert batcher.queued == 0
