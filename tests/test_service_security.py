"""prodvec serve's guards: API keys (reads, admin writes), where it may listen, and image_url's
refusal of the server's own network. Addresses that must be refused are judged through a
resolver in the test, with a connector that records any attempt instead of connecting: no
traffic ever leaves loopback."""
from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import QuietHTTPServer
from test_service import (
    DEMO,
    ONE_OBJECT,
    ServiceCatalog,
    assert_error,
    png_bytes,
    running,
    service_catalog,  # noqa: F401  # a fixture
    settings_for,
    upload,
)

from prodvec.cli.main import main
from prodvec.errors import ConfigError
from prodvec.images.views import SINGLE_VIEW
from prodvec.service.app import create_app
from prodvec.service.fetch_guard import system_resolver
from prodvec.service.security import check_bind, key_matches
from prodvec.service.settings import FetchAllowList, service_settings
from prodvec.worker.pipeline import Worker

READ_KEYS = ("read-key-one", "read-key-two")
ADMIN_KEY = "admin-key-secret"


@pytest.fixture(scope="module")
def keyed(service_catalog: ServiceCatalog, test_encoder: Any) -> Iterator[httpx.Client]:
    settings = settings_for(service_catalog.url, api_keys=READ_KEYS, admin_keys=(ADMIN_KEY,))
    with running(create_app(settings, encoder=test_encoder)) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


# --- keys -----------------------------------------------------------------------------------------------------

def test_reads_need_a_valid_key(keyed: httpx.Client):
    missing = keyed.get("/v1/categories")
    assert_error(missing, 401, "X-API-Key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = keyed.get("/v1/categories", headers={"X-API-Key": "guessed-key"})
    assert_error(wrong, 403, "not valid")
    assert "guessed-key" not in wrong.text  # keys are never echoed
    assert_error(keyed.get("/v1/categories", headers={"Authorization": "Bearer guessed-key"}), 403)
    assert_error(keyed.post("/v1/search", json={"sku": "FM-00001"}), 401)
    assert_error(keyed.get("/v1/products/FM-00001/similar"), 401)
    for headers in ({"X-API-Key": READ_KEYS[0]}, {"Authorization": f"Bearer {READ_KEYS[1]}"},
                    {"X-API-Key": ADMIN_KEY}):
        assert keyed.get("/v1/categories", headers=headers).status_code == 200
        assert keyed.post("/v1/search", json={"sku": "FM-00001"}, headers=headers).status_code == 200
    # Open without a key, as docs/service.md lists them: liveness, readiness, the page, the docs
    # and thumbnails (an <img> sends no key). Every other read needs one.
    for path in ("/healthz", "/readyz", "/", "/static/app.js", "/docs", "/redoc", "/openapi.json",
                 "/images/FM-00001"):
        assert keyed.get(path).status_code == 200, path
    for path in ("/v1/products/FM-00001", "/v1/status", "/v1/categories"):
        assert_error(keyed.get(path), 401, "X-API-Key")


def test_admin_put_queues_the_product_and_the_worker_makes_it_searchable(
    keyed: httpx.Client, service_catalog: ServiceCatalog, test_encoder: Any
):
    sku, photo = "NEW-1", DEMO / "images" / "FM-00100.png"  # a photo the 40 products do not have
    product = {"title": "Fresh sneaker", "category": "sneaker", "price": 59.5, "stock": 3, "image": str(photo)}
    assert_error(keyed.put(f"/v1/products/{sku}", json=product), 401, "admin key")
    assert_error(keyed.put(f"/v1/products/{sku}", json=product, headers={"X-API-Key": READ_KEYS[0]}), 403, "admin")
    admin = {"X-API-Key": ADMIN_KEY}
    assert keyed.get(f"/v1/products/{sku}", headers=admin).status_code == 404

    written = keyed.put(f"/v1/products/{sku}", json=product, headers=admin)
    assert written.status_code == 200, written.text
    answer = written.json()
    assert (answer["created"], answer["changed"], answer["queued"]) == (True, True, True)
    assert answer["product"]["embedded"] is False and answer["product"]["queue"] == "pending"
    assert keyed.get("/v1/status", headers=admin).json()["pending"] == 1
    assert_error(keyed.get(f"/v1/products/{sku}/similar", headers=admin), 409, "queued")
    with psycopg.connect(service_catalog.url, autocommit=True) as conn:  # as a photo that failed for good
        failed = "UPDATE embedding_jobs SET state = %s, last_error = %s WHERE product_id = (SELECT id FROM products " \
                 "WHERE sku = %s)"
        conn.execute(failed, ("failed", "not an image", sku))
        assert_error(keyed.get(f"/v1/products/{sku}/similar", headers=admin), 409, "not an image",
                     f"prodvec retry --sku {sku}")
        conn.execute(failed, ("pending", None, sku))
    before = upload(keyed, png_bytes(photo), headers=admin)
    assert sku not in [hit["sku"] for hit in before.json()["hits"]]

    assert Worker(service_catalog.url, test_encoder, policy=SINGLE_VIEW).run(once=True).embedded == 1
    after = upload(keyed, png_bytes(photo), headers=admin)
    assert after.json()["hits"][0]["sku"] == sku and after.json()["hits"][0]["distance"] < 1e-3
    assert keyed.get(f"/v1/products/{sku}", headers=admin).json()["embedded"] is True

    # As an import: the same row again writes nothing; a price change is stored but queues nothing.
    again = keyed.put(f"/v1/products/{sku}", json=product, headers=admin).json()
    assert (again["created"], again["changed"], again["queued"]) == (False, False, False)
    cheaper = keyed.put(f"/v1/products/{sku}", json={**product, "price": 49}, headers=admin).json()
    assert (cheaper["changed"], cheaper["queued"], cheaper["product"]["price"]) == (True, False, 49.0)

    assert_error(keyed.put(f"/v1/products/{sku}", json={**product, "price": 1.234}, headers=admin), 422, "decimals")
    assert_error(keyed.put(f"/v1/products/{sku}", json={**product, "price": -1}, headers=admin), 422)
    assert_error(keyed.put(f"/v1/products/{sku}", json={**product, "image": "ftp://x/y.png"}, headers=admin), 422,
                 "scheme")

    assert_error(keyed.delete(f"/v1/products/{sku}", headers={"X-API-Key": READ_KEYS[0]}), 403)
    assert keyed.delete(f"/v1/products/{sku}", headers=admin).status_code == 204
    assert_error(keyed.get(f"/v1/products/{sku}", headers=admin), 404)
    assert_error(keyed.delete(f"/v1/products/{sku}", headers=admin), 404)


def test_a_put_body_that_is_not_a_json_object_says_where_and_what_to_send(keyed: httpx.Client):
    admin = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
    broken = b'{"title": "Court sneaker",\n "price": }'  # line 2, column 11: a value is missing
    answer = keyed.put("/v1/products/NEW-2", content=broken, headers=admin)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": f"the request body is not valid JSON (Expecting value at line 2 column 11): "
                                      f"{ONE_OBJECT}"}
    not_an_object = keyed.put("/v1/products/NEW-2", content=b'"a sneaker"', headers=admin)
    assert not_an_object.status_code == 422, not_an_object.text
    assert not_an_object.json() == {"error": f"invalid request: the body is JSON but not an object: {ONE_OBJECT}"}
    # An object, but not sent as JSON: curl -d (a form's type), text/plain, curl -F (multipart), untyped.
    key, product = {"X-API-Key": ADMIN_KEY}, b'{"title": "x", "price": 1}'
    for sent, answer in (
        ("sent as application/x-www-form-urlencoded",
         keyed.put("/v1/products/NEW-2", content=product,
                   headers={**key, "Content-Type": "application/x-www-form-urlencoded"})),
        ("sent as text/plain",
         keyed.put("/v1/products/NEW-2", content=product,
                   headers={**key, "Content-Type": "text/plain; charset=utf-8"})),
        ("sent as multipart/form-data", keyed.put("/v1/products/NEW-2", files={"x": (None, "1")}, headers=key)),
        ("sent without a Content-Type", keyed.put("/v1/products/NEW-2", content=product, headers=key)),
    ):
        assert answer.status_code == 415, answer.text
        assert answer.json() == {"error": f"the request body is {sent}, not as JSON: {ONE_OBJECT}"}
    for headers in (admin, key):  # empty, typed as JSON or not at all (docs/service.md: 400)
        empty = keyed.put("/v1/products/NEW-2", content=b"", headers=headers)
        assert empty.status_code == 400, empty.text
        assert empty.json() == {"error": f"the request body is empty: {ONE_OBJECT}"}
    assert keyed.get("/v1/products/NEW-2", headers=admin).status_code == 404  # nothing was written


#: A body FastAPI cannot parse, which it reads before a route's dependencies (the key check) run.
BROKEN_JSON = b'{"title": '


def test_a_request_without_the_right_key_is_refused_whatever_its_body(keyed: httpx.Client):
    """The key is checked before the body is judged: a broken body gets the refusal a good one gets."""
    good = {"title": "Court sneaker", "price": 1}
    for key, status, words in ((None, 401, "writes need an admin key"), (READ_KEYS[0], 403, "not an admin key")):
        headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
        broken = keyed.put("/v1/products/X1", content=BROKEN_JSON, headers=headers)
        assert_error(broken, status, words)
        refused = keyed.put("/v1/products/X1", json=good, headers=headers)
        assert (broken.status_code, broken.json(), broken.headers.get("www-authenticate")) == \
               (refused.status_code, refused.json(), refused.headers.get("www-authenticate"))
    # Reads too: without a key, 401 (with its WWW-Authenticate), not what is wrong with the request.
    for answer in (keyed.post("/v1/search", content=BROKEN_JSON, headers={"Content-Type": "application/json"}),
                   keyed.get("/v1/products/FM-00001/similar", params={"k": 0})):
        assert_error(answer, 401, "this server needs an API key")
        assert answer.headers["www-authenticate"] == "Bearer"
    admin = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
    assert_error(keyed.put("/v1/products/X1", content=BROKEN_JSON, headers=admin), 400, "not valid JSON")


def test_writes_are_off_without_admin_keys(service_catalog: ServiceCatalog, test_encoder: Any):
    with running(create_app(settings_for(service_catalog.url), encoder=test_encoder)) as url:
        product = {"price": 1}
        turned_off = "writes are turned off on this server: start it with PRODVEC_ADMIN_KEYS set"
        # No key could help: with a key or without, the answer says writes are off (not "send a key"),
        # whatever the body.
        for headers in ({}, {"X-API-Key": "any"}):
            assert_error(httpx.put(f"{url}/v1/products/X-1", json=product, headers=headers), 403, turned_off)
            assert_error(httpx.put(f"{url}/v1/products/X-1", content=BROKEN_JSON,
                                   headers={**headers, "Content-Type": "application/json"}), 403, turned_off)
            assert_error(httpx.delete(f"{url}/v1/products/FM-00004", headers=headers), 403, turned_off)
        assert httpx.get(f"{url}/v1/categories").status_code == 200  # no keys configured: reads are open


def test_keys_are_compared_with_every_configured_key():
    assert key_matches("b", ("a", "b", "c"))
    assert not key_matches("d", ("a", "b", "c"))
    assert not key_matches("", ("a",))
    assert not key_matches("a", ())


def test_listening_beyond_loopback_needs_keys_or_an_explicit_open_server(monkeypatch: pytest.MonkeyPatch, capsys):
    for name in ("PRODVEC_API_KEYS", "PRODVEC_ADMIN_KEYS", "PRODVEC_ALLOW_OPEN"):
        monkeypatch.delenv(name, raising=False)
    settings = service_settings({})
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_bind(host, settings)
    for host in ("0.0.0.0", "::", "192.168.1.10", "shop.example.com"):
        with pytest.raises(ConfigError, match="PRODVEC_API_KEYS"):
            check_bind(host, settings)
    check_bind("0.0.0.0", service_settings({"PRODVEC_API_KEYS": "k1,k2"}))
    check_bind("0.0.0.0", service_settings({"PRODVEC_ALLOW_OPEN": "1"}))
    # The command refuses before it starts anything, in one line.
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("prodvec: error: refusing to listen on 0.0.0.0") and error.count("\n") == 1


# --- image_url ------------------------------------------------------------------------------------------------

#: What the test's resolver answers; other names are resolved by the system (localhost, numeric forms).
FAKE_DNS = {
    "internal.example": ["10.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "ula.example": ["fd00::1"],
    "shared.example": ["100.64.0.1"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],  # one bad address is enough to refuse
    "public.example": ["93.184.216.34"],
}


@pytest.fixture(scope="module")
def guarded(service_catalog: ServiceCatalog, test_encoder: Any) -> Iterator[tuple[httpx.Client, list[Any]]]:
    attempts: list[Any] = []

    def resolver(host: str, port: int) -> list[str]:
        return FAKE_DNS[host] if host in FAKE_DNS else system_resolver(host, port)

    def connector(address: str, port: int, timeout: float) -> socket.socket:
        attempts.append((address, port))  # never connect: the test cannot reach (or harm) anything
        raise ConnectionRefusedError("connections are disabled in this test")

    app = create_app(settings_for(service_catalog.url), encoder=test_encoder, resolver=resolver, connector=connector)
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http, attempts


@pytest.mark.parametrize("image_url", [
    "http://127.0.0.1/shoe.jpg", "http://localhost:8000/shoe.jpg", "http://[::1]/shoe.jpg",
    "http://[::ffff:127.0.0.1]/shoe.jpg", "http://2130706433/shoe.jpg", "http://0.0.0.0/shoe.jpg",
    "http://internal.example/shoe.jpg", "https://metadata.example/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/", "http://ula.example/x.png", "http://shared.example/x.png",
    "http://mixed.example/x.png",
])
def test_image_urls_into_the_servers_own_network_are_refused(guarded: tuple[httpx.Client, list[Any]], image_url: str):
    client, attempts = guarded
    attempts.clear()
    assert_error(client.post("/v1/search", json={"image_url": image_url}), 400, "refused", "PRODVEC_FETCH_ALLOW")
    assert attempts == []


@pytest.mark.parametrize("image_url", [f"file://{DEMO}/images/FM-00001.png", "ftp://example.com/x.png",
                                       f"{DEMO}/images/FM-00001.png"])
def test_image_urls_other_than_http_are_refused(guarded: tuple[httpx.Client, list[Any]], image_url: str):
    client, attempts = guarded
    assert_error(client.post("/v1/search", json={"image_url": image_url}), 400, "http(s)")
    assert attempts == []


def test_a_public_address_is_connected_to_as_judged(guarded: tuple[httpx.Client, list[Any]]):
    client, attempts = guarded
    attempts.clear()
    assert_error(client.post("/v1/search", json={"image_url": "http://public.example:8080/x.png"}), 502,
                 "cannot fetch")
    assert attempts == [("93.184.216.34", 8080)]  # the judged address, not a second lookup


class _PhotoServer(http.server.BaseHTTPRequestHandler):
    photo: bytes = b""

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/photo.png": (200, {"Content-Type": "image/png"}, self.photo),
            "/hop": (302, {"Location": "/photo.png"}, b""),
            "/escape": (302, {"Location": f"http://[::1]:{port}/photo.png"}, b""),
            "/big": (200, {"Content-Type": "image/png"}, b"\x89PNG" + b"\x00" * (11 * 1024 * 1024)),
            "/text": (200, {"Content-Type": "image/jpeg"}, b"not a photo at all"),
        }
        status, headers, body = routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_allow_list_lets_image_url_reach_a_listed_network(service_catalog: ServiceCatalog, test_encoder: Any):
    """A real fetch from a photo server on 127.0.0.1, allowed by PRODVEC_FETCH_ALLOW=127.0.0.1; a
    redirect from there to [::1] (not listed) is judged again and refused."""
    handler = type("Handler", (_PhotoServer,), {"photo": Path(DEMO / "images" / "FM-00012.png").read_bytes()})
    photos = QuietHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=photos.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{photos.server_address[1]}"
    settings = settings_for(service_catalog.url, fetch_allow=FetchAllowList.parse("127.0.0.1"))
    try:
        with running(create_app(settings, encoder=test_encoder)) as url, httpx.Client(base_url=url, timeout=120) as c:
            for path in ("/photo.png", "/hop"):
                found = c.post("/v1/search", json={"image_url": base + path, "k": 3})
                assert found.status_code == 200, found.text
                assert found.json()["hits"][0]["sku"] == "FM-00012"
            assert_error(c.post("/v1/search", json={"image_url": base + "/escape"}), 400, "::1", "refused")
            assert_error(c.post("/v1/search", json={"image_url": base + "/big"}), 413, "limit")
            assert_error(c.post("/v1/search", json={"image_url": base + "/text"}), 415, "not a photo")
            assert_error(c.post("/v1/search", json={"image_url": base + "/gone"}), 502, "HTTP 404")
    finally:
        photos.shutdown()
        photos.server_close()
