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
import json
import re
import socket
import struct
import threading
import time
import uuid
import zlib
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
from conftest import TEST_DIMENSIONS, TEST_MODEL
from PIL import Image

from prodvec.catalog import import_catalog
from prodvec.config import load_settings
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server
from prodvec.images.views import SINGLE_VIEW
from prodvec.service.app import create_app
from prodvec.service.settings import ServiceSettings
from prodvec.worker.pipeline import Worker

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


#: One embedded catalog per test run, shared by the test_service*.py modules (each imports the
#: fixture, which pytest would otherwise set up once per module). Tests that write restore it.
_CATALOGS: dict[str, ServiceCatalog] = {}


@pytest.fixture(scope="session")
def service_catalog(pg_server: str, migrated_template: str, test_encoder: Any,
                    tmp_path_factory: pytest.TempPathFactory) -> ServiceCatalog:
    if pg_server in _CATALOGS:
        return _CATALOGS[pg_server]
    url = fresh_database(pg_server, migrated_template)
    rows = demo_rows(PRODUCTS)
    with connect(url) as conn:
        import_catalog(conn, write_catalog(tmp_path_factory.mktemp("catalog"), rows), progress=False)
    stats = Worker(url, test_encoder, policy=SINGLE_VIEW).run(once=True)
    assert stats.embedded == PRODUCTS
    _CATALOGS[pg_server] = ServiceCatalog(url, rows)
    return _CATALOGS[pg_server]


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


def upload(client: httpx.Client, data: bytes, name: str = "photo.png", headers: dict[str, str] | None = None,
           **form: Any) -> httpx.Response:
    return client.post("/v1/search", files={"image": (name, data, "application/octet-stream")}, data=form,
                       headers=headers)


# --- brute force: the expected answer, from the stored vectors and the catalog rows -------------------------

def expected(catalog: ServiceCatalog, query: np.ndarray, *, exclude: str | None = None,
             keep: Callable[[dict[str, str]], bool] = lambda row: True, k: int | None = None,
             max_distance: float | None = None) -> list[tuple[str, float]]:
    """The products ``keep`` lets through, nearest first: the first ``k`` (all by default)."""
    vectors = catalog.vectors()
    q = query.astype(np.float16).astype(np.float32)
    q = q / np.linalg.norm(q)
    scored = [(row["sku"], float(1 - vectors[row["sku"]] @ q)) for row in catalog.rows
              if row["sku"] != exclude and keep(row)]
    scored.sort(key=lambda item: item[1])
    return [item for item in scored if max_distance is None or item[1] <= max_distance][:k]


def assert_same_hits(hits: list[dict[str, Any]], ranking: list[tuple[str, float]], k: int) -> None:
    """The first ``k`` of ``ranking`` (every product the search may return, nearest first): same
    length, same distances (to halfvec rounding), same skus where distances do not tie. Ties are
    looked for in the whole ranking: the k-th product may tie with the first one past the cut, and
    then either may come back."""
    truth = ranking[:k]
    assert len(hits) == len(truth)
    np.testing.assert_allclose([hit["distance"] for hit in hits], [d for _, d in truth], atol=2e-3)
    for hit, (sku, distance) in zip(hits, truth, strict=True):
        ties = sum(abs(d - distance) < 2e-3 for _, d in ranking)
        if ties == 1:
            assert hit["sku"] == sku


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def jpeg_of(path: Path, size: int = 200) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((size, size)).save(out, format="JPEG", quality=92)
    return out.getvalue()


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side×side pixels (900 Mpx at 30000) that is ~100 KB on the wire."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# --- search ---------------------------------------------------------------------------------------------------

def test_upload_of_a_catalog_photo_finds_that_product_first(client: httpx.Client, service_catalog: ServiceCatalog):
    for sku in ("FM-00001", "FM-00004", "FM-00017"):
        response = upload(client, png_bytes(service_catalog.photo(sku)), name=f"{sku}.png")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["hits"][0]["sku"] == sku
        assert answer["hits"][0]["distance"] < 1e-3
        assert answer["model"] == TEST_MODEL
        assert answer["took_ms"] > 0
        assert answer["exact"] == (answer["strategy"] != "hnsw")
        assert answer["recall"] is None  # nothing measured on this catalog (`prodvec recall`)
        assert answer["hits"][0]["image_url"] == f"/images/{sku}"
        assert len(answer["hits"]) == 10


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, str]], bool]]] = [
    ({}, lambda row: True),
    ({"category": "sneaker"}, lambda row: row["category"] == "sneaker"),
    ({"category": ["sneaker", "sandal"], "max_price": 60},
     lambda row: row["category"] in ("sneaker", "sandal") and float(row["price"]) <= 60),
    ({"min_price": 30, "in_stock": True}, lambda row: float(row["price"]) >= 30 and int(row["stock"]) > 0),
    ({"min_price": 20, "max_price": 50, "k": 100}, lambda row: 20 <= float(row["price"]) <= 50),
    ({"k": 100}, lambda row: True),
]


@pytest.mark.parametrize(("filters", "keep"), FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_similar_honours_every_filter_and_excludes_itself(
    client: httpx.Client, service_catalog: ServiceCatalog, filters: dict[str, Any], keep: Callable[..., bool]
):
    sku = "FM-00004"
    ranking = expected(service_catalog, service_catalog.vectors()[sku], exclude=sku, keep=keep)
    params = [(name, str(item).lower() if isinstance(item, bool) else item)
              for name, value in filters.items() for item in (value if isinstance(value, list) else [value])]
    similar = client.get(f"/v1/products/{sku}/similar", params=params)
    assert similar.status_code == 200, similar.text
    assert sku not in [hit["sku"] for hit in similar.json()["hits"]]
    assert_same_hits(similar.json()["hits"], ranking, filters.get("k", 10))
    # The same search as JSON: the same answer.
    by_json = client.post("/v1/search", json={"sku": sku, **filters})
    assert by_json.status_code == 200, by_json.text
    assert [hit["sku"] for hit in by_json.json()["hits"]] == [hit["sku"] for hit in similar.json()["hits"]]


def test_max_distance_cuts_the_list(client: httpx.Client, service_catalog: ServiceCatalog):
    sku = "FM-00010"
    everything = expected(service_catalog, service_catalog.vectors()[sku], exclude=sku)
    # Cut in the widest gap between the 5th and 16th nearest: at a near-tie (this random-weight
    # model's distances lie ~1e-5 apart at places) the side of the cut would be a coin toss.
    kept = max(range(5, 16), key=lambda n: everything[n][1] - everything[n - 1][1])
    assert everything[kept][1] - everything[kept - 1][1] > 1e-3, everything[:16]
    cut = (everything[kept - 1][1] + everything[kept][1]) / 2
    response = client.get(f"/v1/products/{sku}/similar", params={"max_distance": cut, "k": 20})
    assert response.status_code == 200, response.text
    assert_same_hits(response.json()["hits"], everything[:kept], kept)  # the cut leaves no near-tie


def test_upload_with_filters_matches_brute_force(client: httpx.Client, service_catalog: ServiceCatalog):
    """robust=false: the query vector is the photo's own embedding, so numpy over the stored vectors
    gives the answer; the form carries several categories, a price cap and in_stock."""
    sku = "FM-00004"  # a sneaker, in stock
    def keep(row: dict[str, str]) -> bool:
        return row["category"] in ("sneaker", "sandal") and float(row["price"]) <= 80 and int(row["stock"]) > 0

    ranking = expected(service_catalog, service_catalog.vectors()[sku], keep=keep)
    response = client.post(
        "/v1/search", files={"image": ("x.png", png_bytes(service_catalog.photo(sku)), "image/png")},
        data={"category": ["sneaker", "sandal"], "max_price": "80", "in_stock": "true", "k": "5", "robust": "false"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["sku"] == sku
    assert_same_hits(response.json()["hits"], ranking, 5)


def test_a_jpeg_upload_and_a_robust_search_find_the_product(client: httpx.Client, service_catalog: ServiceCatalog):
    sku = "FM-00020"
    response = upload(client, jpeg_of(service_catalog.photo(sku)), name="photo.jpg", k=3, in_stock="false")
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["sku"] == sku


def test_text_query_ranks_like_brute_force(client: httpx.Client, service_catalog: ServiceCatalog, test_encoder: Any):
    text = "a black leather ankle boot"
    ranking = expected(service_catalog, test_encoder.encode_text([text])[0])
    response = client.post("/v1/search", json={"text": text, "k": 7})
    assert response.status_code == 200, response.text
    assert_same_hits(response.json()["hits"], ranking, 7)


def test_vector_query(client: httpx.Client, service_catalog: ServiceCatalog):
    vector = service_catalog.vectors()["FM-00030"]
    response = client.post("/v1/search", json={"vector": vector.tolist(), "k": 3, "category": "bag"})
    assert response.status_code == 200, response.text
    ranking = expected(service_catalog, vector, keep=lambda row: row["category"] == "bag")
    assert_same_hits(response.json()["hits"], ranking, 3)


def test_the_search_answer_docs_service_md_shows_has_a_real_answers_fields(client: httpx.Client):
    """The page's sample answer (values made up) names every field a real one has, in its order."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "service.md").read_text()
    shown = re.search(r"^Every search answers in the same shape.*?^```json\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert shown, "docs/service.md: the sample search answer moved"
    sample = json.loads(shown[1])
    real = client.get("/v1/products/FM-00001/similar", params={"k": 1}).json()
    assert list(sample) == list(real)
    assert list(sample["hits"][0]) == list(real["hits"][0])


# --- reads ----------------------------------------------------------------------------------------------------

def test_product_categories_status_and_readiness(client: httpx.Client, service_catalog: ServiceCatalog):
    product = client.get("/v1/products/FM-00002").json()
    row = next(row for row in service_catalog.rows if row["sku"] == "FM-00002")
    assert (product["title"], product["category"], product["price"], product["stock"]) == (
        row["title"], row["category"], float(row["price"]), int(row["stock"]))
    assert product["embedded"] is True and product["queue"] is None

    counts: dict[str, int] = {}
    for row in service_catalog.rows:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    categories = client.get("/v1/categories").json()
    assert {item["name"]: item["products"] for item in categories} == counts

    status = client.get("/v1/status").json()
    assert (status["total"], status["embedded"], status["pending"], status["failed"]) == (PRODUCTS, PRODUCTS, 0, 0)
    assert status["oldest_pending_seconds"] is None and status["model"] == TEST_MODEL
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_thumbnail_is_cached_with_an_etag(client: httpx.Client, service_catalog: ServiceCatalog):
    response = client.get("/images/FM-00003")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"]
    thumbnail = Image.open(io.BytesIO(response.content))
    original = Image.open(service_catalog.photo("FM-00003"))
    assert thumbnail.format == "JPEG" and thumbnail.size == original.size  # small photos are not enlarged
    again = client.get("/images/FM-00003", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/images/FM-00004").headers["etag"] != response.headers["etag"]


def test_the_page_and_the_openapi_document(client: httpx.Client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    for path in ("/v1/products/{sku}/similar", "/v1/products/{sku}", "/v1/categories", "/v1/status",
                 "/healthz", "/readyz", "/images/{sku}"):
        assert path in spec["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_documentation_needs_no_internet(client: httpx.Client, page: str):
    """Swagger UI and ReDoc load their scripts and styles from this server, not from a CDN."""
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(asset.endswith(".js") for asset in assets), html.text
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{page} loads {asset} from elsewhere"
        loaded = client.get(asset)
        assert loaded.status_code == 200 and len(loaded.content) > 0, asset
    assert "http://" not in html.text and "https://" not in html.text, html.text
    assert "/openapi.json" in html.text


# --- errors ---------------------------------------------------------------------------------------------------

def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def test_a_decompression_bomb_is_refused(client: httpx.Client):
    bomb = bomb_png()
    assert len(bomb) < 1024 * 1024
    assert_error(upload(client, bomb, name="bomb.png"), 413, "decompression bomb")


def test_a_20_mb_upload_is_refused_and_the_server_goes_on(client: httpx.Client, service_catalog: ServiceCatalog):
    big = np.random.default_rng(1).bytes(20 * 1024 * 1024)
    assert_error(upload(client, big, name="big.jpg"), 413, "10 MB")
    assert upload(client, png_bytes(service_catalog.photo("FM-00001"))).status_code == 200


def test_a_streamed_upload_is_cut_off_at_the_limit(client: httpx.Client):
    """No Content-Length (chunked): the body is counted as it arrives and refused past 10 MB."""
    def body() -> Iterator[bytes]:
        yield b"--cut\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(20):
            yield b"\xff" * (1024 * 1024)
        yield b"\r\n--cut--\r\n"

    response = client.post("/v1/search", content=body(),
                           headers={"Content-Type": "multipart/form-data; boundary=cut"})
    assert_error(response, 413, "10 MB")
    assert client.get("/healthz").status_code == 200


def test_not_an_image_whatever_its_name(client: httpx.Client):
    text = b"these are not the pixels you are looking for\n" * 20
    assert_error(upload(client, text, name="shoe.jpg"), 415, "not a photo", "send a JPEG")
    html = b"<!doctype html><html><body>login</body></html>"
    assert_error(upload(client, html, name="shoe.png"), 415)


def test_a_truncated_photo_is_422_not_415(client: httpx.Client):
    """A photo of a kind the server reads, cut off: in its pixels or already in its header."""
    whole = jpeg_of(DEMO / "images" / "FM-00001.png")
    assert_error(upload(client, whole[: len(whole) // 2], name="cut.jpg"), 422,
                 "the image is truncated or corrupt", "JPEG", "send the complete file")
    assert_error(upload(client, whole[:300], name="cut.jpg"), 422,
                 "the image is truncated or corrupt", "starts as a JPEG file", "header")
    png = png_bytes(DEMO / "images" / "FM-00001.png")
    assert_error(upload(client, png[: len(png) // 2], name="cut.png"), 422, "the image is truncated or corrupt", "PNG")


def test_empty_bodies(client: httpx.Client):
    assert_error(client.post("/v1/search"), 400, "empty")
    assert_error(client.post("/v1/search", content=b"", headers={"Content-Type": "application/json"}), 400, "empty")
    assert_error(upload(client, b"", name="empty.jpg"), 400, "empty")
    assert_error(client.post("/v1/search", json={}), 422, "exactly one of")
    assert_error(client.post("/v1/search", content=b"hello", headers={"Content-Type": "text/plain"}), 415)


#: What a body that cannot be read is told to send instead.
ONE_OBJECT = "send one JSON object (Content-Type: application/json) with the fields /docs shows for this endpoint"


def test_unreadable_bodies_say_what_to_send(client: httpx.Client, service_catalog: ServiceCatalog):
    """A body cut off or not JSON, JSON that is not an object, a form with two photos or too many
    fields: one line in prodvec's words (the place for JSON), none of the framework's."""
    cut = b'{"sku": "FM-00004",'  # 19 characters: a value is missing after the comma
    answers = {
        (400, f"the request body is not valid JSON (EOF while parsing a value at line 1 column 19): {ONE_OBJECT}"):
            client.post("/v1/search", content=cut, headers={"Content-Type": "application/json"}),
        (422, f"invalid request: the body is JSON but not an object: {ONE_OBJECT}"):
            client.post("/v1/search", json=["FM-00004"]),
        (400, "send one photo per search, in the field 'image' (curl -F image=@photo.jpg)"):
            client.post("/v1/search", files=[("image", ("a.png", png_bytes(service_catalog.photo(sku)), "image/png"))
                                             for sku in ("FM-00001", "FM-00002")]),
        (400, "the form has more than 64 fields: send the photo in the field 'image' and the filters, nothing else"):
            client.post("/v1/search", data={"sku": "FM-00001", "category": [f"c{n}" for n in range(70)]}),
    }
    for (status, message), response in answers.items():
        assert response.status_code == status, response.text
        assert response.json() == {"error": message}


@pytest.mark.parametrize("params", [{"k": 0}, {"k": 101}, {"k": "many"}, {"min_price": -1},
                                    {"max_distance": 3}, {"colour": "red"}, {"min_price": 50, "max_price": 5},
                                    {"max_price": "inf"}, {"min_price": "nan"}])
def test_bad_parameters_are_422(client: httpx.Client, params: dict[str, Any]):
    assert_error(client.get("/v1/products/FM-00001/similar", params=params), 422, "invalid request")
    assert_error(client.post("/v1/search", json={"sku": "FM-00001", **params}), 422, "invalid request")


def test_an_empty_optional_field_counts_as_absent(client: httpx.Client, service_catalog: ServiceCatalog):
    """What a browser's form sends for inputs left empty: every optional field, from a form, a
    query string or JSON, searches as if it were not there."""
    empty = {"category": "", "min_price": "", "max_price": "", "in_stock": "", "max_distance": "", "k": "",
             "robust": ""}
    photo = png_bytes(service_catalog.photo("FM-00004"))
    plain = upload(client, photo)
    assert plain.status_code == 200, plain.text
    with_empty = upload(client, photo, **empty)
    assert with_empty.status_code == 200, with_empty.text
    assert [hit["sku"] for hit in with_empty.json()["hits"]] == [hit["sku"] for hit in plain.json()["hits"]]
    truth = [hit["sku"] for hit in client.get("/v1/products/FM-00004/similar").json()["hits"]]
    without_robust = {key: value for key, value in empty.items() if key != "robust"}
    for response in (client.get("/v1/products/FM-00004/similar", params=without_robust),
                     client.post("/v1/search", json={"sku": "FM-00004", **empty}),
                     client.post("/v1/search", data={"sku": "FM-00004", "text": "", "image_url": "", **empty})):
        assert response.status_code == 200, response.text
        assert [hit["sku"] for hit in response.json()["hits"]] == truth
    # Empty or not, an unknown field is still refused.
    assert_error(upload(client, photo, colour=""), 422, "unknown field 'colour'")


def test_invalid_parameters_read_as_prodvecs_own_words(client: httpx.Client, service_catalog: ServiceCatalog):
    """Each problem names its field and what to do; nothing of pydantic's wording ("Value error, ",
    "Extra inputs are not permitted", "Input should be")."""
    photo = png_bytes(service_catalog.photo("FM-00004"))
    price = "invalid request: min_price 50 is above max_price 10: no product can match"
    answers = {
        price: [client.get("/v1/products/FM-00004/similar", params={"min_price": 50, "max_price": 10}),
                client.post("/v1/search", json={"sku": "FM-00004", "min_price": 50, "max_price": 10}),
                upload(client, photo, min_price="50", max_price="10")],
        "invalid request: unknown field 'photo' (the fields are: category, min_price, max_price, in_stock, "
        "max_distance, k, robust, sku, text, vector, image_url)": [
            client.post("/v1/search", json={"photo": "shoe.jpg"})],
        "invalid request: unknown field 'colour' (the fields are: category, min_price, max_price, in_stock, "
        "max_distance, k)": [client.get("/v1/products/FM-00004/similar", params={"colour": "red"})],
        "invalid request: unknown field 'photo': send the photo in the field 'image' (curl -F image=@photo.jpg)": [
            client.post("/v1/search", files={"photo": ("shoe.png", photo, "image/png")})],
        "invalid request: k should be a valid integer, unable to parse string as an integer (got 'many')": [
            client.get("/v1/products/FM-00004/similar", params={"k": "many"}), upload(client, photo, k="many")],
        "invalid request: max_distance should be less than or equal to 2 (got 3); k should be greater than or "
        "equal to 1 (got 0)": [client.post("/v1/search", json={"sku": "FM-00004", "max_distance": 3, "k": 0})],
    }
    for message, responses in answers.items():
        for response in responses:
            assert response.status_code == 422, response.text
            assert response.json() == {"error": message}


def test_an_unknown_category_is_422_naming_the_near_ones(client: httpx.Client, service_catalog: ServiceCatalog):
    """Categories match exactly: one no product has (a typo, most often) is refused, not answered empty."""
    assert "sneakers" not in {row["category"] for row in service_catalog.rows}
    assert_error(client.get("/v1/products/FM-00004/similar", params={"category": "sneakers"}), 422,
                 "unknown category 'sneakers'", "near ones: sneaker", "/v1/categories")
    vector = service_catalog.vectors()["FM-00004"].tolist()
    response = client.post("/v1/search", json={"vector": vector, "category": ["sandal", "T-shirt"]})
    assert_error(response, 422, "unknown category 'T-shirt'", "tshirt")
    assert_error(client.post("/v1/search", json={"vector": vector, "category": "jewellery"}), 422,
                 "unknown category 'jewellery'", "there are 10: ankle_boot, bag, coat")
    assert client.post("/v1/search", json={"vector": vector, "category": ["sandal", "tshirt"]}).status_code == 200


def test_bad_queries_are_400(client: httpx.Client):
    assert_error(client.post("/v1/search", json={"vector": [0.1, 0.2, 0.3]}), 400, "dimensions")
    assert_error(client.post("/v1/search", json={"text": "   "}), 400, "blank")
    assert_error(client.post("/v1/search", json={"sku": "FM-00001", "text": "shoe"}), 422, "exactly one of")


def test_readiness_says_what_to_do(pg_server: str, test_encoder: Any):
    """An unmigrated database: the server starts, /healthz lives, /readyz says to migrate."""
    name = f"t_service_bare_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server, name)
    with running(create_app(settings_for(with_dbname(pg_server, name)), encoder=test_encoder)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] is True and ready.json()["schema_current"] is False, ready.json()["problem"]
        assert "prodvec migrate" in ready.json()["problem"]
        # A search says the same, as the server's problem (503), not pgvector's raw error.
        searched = httpx.post(f"{url}/v1/search", json={"vector": [0.1] * 512})
        assert searched.status_code == 503 and "prodvec migrate" in searched.json()["error"], searched.text
    # With keys, /readyz stays open (load balancers send none) but tells the reason only to a key.
    keyed = settings_for(with_dbname(pg_server, name), api_keys=("reader-key",))
    with running(create_app(keyed, encoder=test_encoder)) as url:
        anonymous = httpx.get(f"{url}/readyz")
        assert anonymous.status_code == 503 and anonymous.json()["schema_current"] is False
        assert "prodvec migrate" not in anonymous.json()["problem"] and name not in anonymous.json()["problem"]
        assert "with an API key" in anonymous.json()["problem"]
        for key in ("wrong-key", "reader-key"):
            told = httpx.get(f"{url}/readyz", headers={"X-API-Key": key})
            assert ("prodvec migrate" in told.json()["problem"]) == (key == "reader-key"), told.json()


def test_when_the_database_stops_readiness_and_searches_say_what_to_do(
    pgdata: Path, test_encoder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A server on its own embedded database, which then stops: /readyz and searches say to start
    it again (`prodvec db start`); a server that takes it for one's own PostgreSQL says to check it.
    The server logs each database error in one line."""
    from prodvec.db.active_model import ActiveModel, record_active_model
    from prodvec.db.embedded import stop_server
    from prodvec.db.migrate import upgrade

    server = ensure_server(pgdata)
    ensure_database(server, "prodvec")
    url = with_dbname(server, "prodvec")
    upgrade(url, TEST_DIMENSIONS)
    with psycopg.connect(url, autocommit=True) as conn:
        record_active_model(conn, ActiveModel(TEST_MODEL, TEST_DIMENSIONS, "single"))
    embedded = settings_for(url)
    embedded = replace(embedded, prodvec=replace(embedded.prodvec, home=pgdata.parent))
    own = settings_for(url)
    own = replace(own, prodvec=replace(own.prodvec, home=tmp_path))
    with running(create_app(embedded, encoder=test_encoder)) as embedded_url, \
            running(create_app(own, encoder=test_encoder)) as own_url, \
            running(create_app(replace(embedded, api_keys=("reader-key",)), encoder=test_encoder)) as keyed_url:
        assert httpx.get(f"{embedded_url}/readyz").status_code == 200
        assert stop_server(pgdata)
        # A keyed server's open routes answer anyone: without a valid key, no host, error or path.
        for headers in ({}, {"X-API-Key": "wrong-key"}):
            thumbnail = httpx.get(f"{keyed_url}/images/FM-00001", headers=headers)
            assert_error(thumbnail, 503, "the database is unavailable right now: retry in a moment")
            assert thumbnail.headers["retry-after"] == "5"
            ready = httpx.get(f"{keyed_url}/readyz", headers=headers)
            assert ready.status_code == 503 and ready.json()["database"] is False
            assert ready.json()["schema_current"] is None
            for answer in (thumbnail, ready):
                assert str(pgdata) not in answer.text and ".s.PGSQL" not in answer.text, answer.text
                assert "prodvec db start" not in answer.text, answer.text
        told = httpx.get(f"{keyed_url}/images/FM-00001", headers={"X-API-Key": "reader-key"})
        assert_error(told, 503, "retry in a moment", f"(its data is in {pgdata})")
        assert told.headers["retry-after"] == "5"
        for base, advice in (
            (embedded_url, f"start the embedded database with `prodvec db start` (its data is in {pgdata})"),
            (own_url, f"check that the PostgreSQL server at {pgdata}:5432/prodvec is running and that "
                      "DATABASE_URL names it"),
        ):
            ready = httpx.get(f"{base}/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"] is False
            assert ready.json()["schema_current"] is None  # unknown: it cannot be checked
            assert ready.json()["problem"].startswith("the database cannot be reached (")
            assert ready.json()["problem"].endswith(advice), ready.json()["problem"]
            assert "\n" not in ready.json()["problem"]
            search = httpx.post(f"{base}/v1/search", json={"sku": "FM-00001"})
            assert_error(search, 503, "retry in a moment", advice)
            assert search.headers["retry-after"] == "5"
            # Every other read says the same, not 500 "internal server error".
            for path in ("/v1/status", "/v1/categories", "/v1/products/FM-00001", "/images/FM-00001"):
                assert_error(httpx.get(f"{base}{path}"), 503, "retry in a moment", advice)
    logged = [record.getMessage() for record in caplog.records if record.name == "prodvec.service"]
    errors = [message for message in logged if message.startswith("database error: ")]
    assert errors and all("\n" not in message and "\t" not in message for message in errors), errors


def test_a_method_a_path_does_not_take_is_405_naming_those_it_does(client: httpx.Client):
    for method, path, takes, allow in (("PATCH", "/v1/products/FM-00001", "GET, PUT or DELETE", "GET, PUT, DELETE"),
                                       ("GET", "/v1/search", "POST", "POST"), ("POST", "/", "GET", "GET"),
                                       ("PUT", "/static/app.js", "GET or HEAD", "GET, HEAD")):
        answer = client.request(method, path)
        assert answer.status_code == 405, answer.text
        assert answer.json() == {"error": f"{method} is not allowed on {path}: it takes {takes} (see /docs)"}
        assert answer.headers["allow"] == allow


def test_unknown_skus_are_404(client: httpx.Client):
    assert_error(client.get("/v1/products/NOPE-1/similar"), 404, "NOPE-1")
    assert_error(client.post("/v1/search", json={"sku": "NOPE-1"}), 404, "NOPE-1")
    assert_error(client.get("/v1/products/NOPE-1"), 404, "NOPE-1")
    assert_error(client.get("/images/NOPE-1"), 404, "NOPE-1")
    assert_error(client.get("/v2/nothing"), 404, "/docs")
