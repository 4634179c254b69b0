"""prodvec serve against the embedded database: a real uvicorn server on 127.0.0.1, real photos.

A catalog of 40 demo products (real Fashion-MNIST photos) embedded by the random-weight test
model. Expected answers are computed independently: numpy over the stored vectors, with the
filters applied as masks. Random weights: plumbing only, never a quality figure.
The fixtures here (``service_catalog``, ``running``, ``service_app``) serve the other
tests/test_service_*.py modules too.
"""
from __future__ import annotations

import csv
import io
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import uvicorn
from PIL import Image

from prodvec.catalog import import_catalog
from prodvec.config import load_settings
from prodvec.db.connection import connect, with_dbname
from prodvec.images.views import SINGLE_VIEW
from prodvec.service.app import create_app
from prodvec.service.settings import ServiceSettings
from prodvec.worker.pipeline import Worker
from tests.conftest import TEST_MODEL

DEMO = Path(__file__).resolve().parent.parent / "prodvec" / "demo" / "catalog"
PRODUCTS = 40


@dataclass(frozen=True)
class ServiceCatalog:
    url: str
    rows: list[dict[str, str]]  # as in catalog.csv, image paths absolute

    def photo(self, sku: str) -> Path:
        return Path(next(row["image"] for row in self.rows if row["sku"] == sku))

    def vectors(self) -> dict[str, np.ndarray]:
        with connect(self.url) as conn:
            rows = conn.execute("SELECT sku, embedding FROM products WHERE embedding IS NOT NULL").fetchall()
        return {sku: np.asarray(embedding.to_list(), dtype=np.float32) for sku, embedding in rows}


def fresh_database(pg_server: str, template: str) -> str:
    name = f"t_service_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_dbname(pg_server, name)


def demo_rows(count: int) -> list[dict[str, str]]:
    with open(DEMO / "catalog.csv", newline="") as file:
        rows = list(csv.DictReader(file))[:count]
    return [{**row, "image": str(DEMO / row["image"])} for row in rows]


def write_catalog(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "catalog.csv"
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def service_catalog(pg_server: str, migrated_template: str, test_encoder: Any,
                    tmp_path_factory: pytest.TempPathFactory) -> ServiceCatalog:
    url = fresh_database(pg_server, migrated_template)
    rows = demo_rows(PRODUCTS)
    with connect(url) as conn:
        import_catalog(conn, write_catalog(tmp_path_factory.mktemp("catalog"), rows), progress=False)
    stats = Worker(url, test_encoder, policy=SINGLE_VIEW).run(once=True)
    assert stats.embedded == PRODUCTS
    return ServiceCatalog(url, rows)


def settings_for(url: str, **changes: Any) -> ServiceSettings:
    """Service settings for the test model on the CPU, whatever the environment says."""
    prodvec = replace(load_settings(), database_url=url, model=TEST_MODEL, device="cpu",
                      robust_queries=True, catalog_views="single")
    return replace(ServiceSettings(prodvec=prodvec), **changes)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free 127.0.0.1 port, in a daemon thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def base_url(service_catalog: ServiceCatalog, test_encoder: Any) -> Iterator[str]:
    with running(create_app(settings_for(service_catalog.url), encoder=test_encoder)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        yield http


def upload(client: httpx.Client, data: bytes, name: str = "photo.png", **form: Any) -> httpx.Response:
    return client.post("/v1/search", files={"image": (name, data, "application/octet-stream")}, data=form)


# --- brute force: the expected answer, from the stored vectors and the catalog rows -------------------------

def expected(catalog: ServiceCatalog, query: np.ndarray, *, exclude: str | None = None,
             keep: Callable[[dict[str, str]], bool] = lambda row: True, k: int = 10,
             max_distance: float | None = None) -> list[tuple[str, float]]:
    vectors = catalog.vectors()
    q = query.astype(np.float16).astype(np.float32)
    q = q / np.linalg.norm(q)
    scored = [(row["sku"], float(1 - vectors[row["sku"]] @ q)) for row in catalog.rows
              if row["sku"] != exclude and keep(row)]
    scored.sort(key=lambda item: item[1])
    return [item for item in scored if max_distance is None or item[1] <= max_distance][:k]


def assert_same_hits(hits: list[dict[str, Any]], truth: list[tuple[str, float]]) -> None:
    """Same length, same distances (to halfvec rounding), same skus where distances do not tie."""
    assert len(hits) == len(truth)
    np.testing.assert_allclose([hit["distance"] for hit in hits], [d for _, d in truth], atol=2e-3)
    for hit, (sku, distance) in zip(hits, truth, strict=True):
        ties = sum(abs(d - distance) < 2e-3 for _, d in truth)
        if ties == 1:
            assert hit["sku"] == sku


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def jpeg_of(path: Path, size: int = 200) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((size, size)).save(out, format="JPEG", quality=92)
    return out.getvalue()
