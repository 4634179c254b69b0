"""load_bytes against a real HTTP server on 127.0.0.1: bounded, and errors classed for the queue
(permanent or transient) and by kind (for the metrics)."""
from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import QuietHTTPServer
from PIL import Image

from prodvec import queue as jobs
from prodvec.db.model_registry import list_models
from prodvec.errors import ImageError
from prodvec.images.load import MAX_REDIRECTS, load_bytes
from prodvec.worker.pipeline import Worker, WorkerOptions

PHOTO = io.BytesIO()
Image.new("RGB", (32, 24), (200, 30, 30)).save(PHOTO, "PNG")
PHOTO_BYTES = PHOTO.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """One path per behaviour; /flaky/<key>/<n> fails n times per key, then serves the photo."""

    hits: ClassVar[Counter[str]] = Counter()
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        route = parts[0]
        if route == "photo.png":
            self._send(200, PHOTO_BYTES, "image/png")
        elif route == "status":
            self._send(int(parts[1]), b"nope", "text/plain")
        elif route == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Log in to see this image</body></html>", "text/html")
        elif route == "sleep":  # /sleep/SECONDS: the photo, that late
            time.sleep(float(parts[1]))
            self._send(200, PHOTO_BYTES, "image/png")
        elif route == "drip":  # headers at once, then a byte every 0.1 s for 30 s: only a total deadline stops it
            self._headers(200, {"Content-Length": "1000"})
            for _ in range(300):
                time.sleep(0.1)
                self.wfile.write(b"x")
                self.wfile.flush()
        elif route == "big":
            self._send(200, b"x" * 5000, "image/png")
        elif route == "big-unannounced":  # HTTP/1.0, no Content-Length: the body ends when the socket closes
            self._headers(200, {"Content-Type": "image/png"})
            self.wfile.write(b"x" * 5000)
        elif route == "cut-short":
            self._headers(200, {"Content-Length": str(len(PHOTO_BYTES))})
            self.wfile.write(PHOTO_BYTES[:20])
        elif route == "hang-up":  # no response at all, connection closed: like a reset
            self.close_connection = True
        elif route == "redirect":  # /redirect/<n>: n hops, then the photo
            hops = int(parts[1])
            self._redirect(f"/redirect/{hops - 1}" if hops > 1 else "/photo.png")
        elif route == "loop":
            self._redirect("/loop")
        elif route == "to":
            self._redirect({"file": "file:///etc/passwd", "ftp": "ftp://127.0.0.1/photo.png"}[parts[1]])
        elif route == "flaky":
            with self.lock:
                self.hits[parts[1]] += 1
                failing = self.hits[parts[1]] <= int(parts[2])
            if failing:
                self._send(500, b"try again", "text/plain")
            else:
                self._send(200, PHOTO_BYTES, "image/png")
        else:
            self._send(404, b"no such route", "text/plain")

    def _headers(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self._headers(code, {"Content-Type": content_type, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._headers(302, {"Location": location, "Content-Length": "0"})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = QuietHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _error(url: str, **options: float) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_bytes(url, **options)
    return caught.value


def test_serves_the_image(server: str) -> None:
    assert load_bytes(f"{server}/photo.png") == PHOTO_BYTES


@pytest.mark.parametrize(
    ("path", "permanent", "kind", "reason"),
    [
        ("/status/500", False, "http_5xx", "HTTP 500"),
        ("/status/503", False, "http_5xx", "HTTP 503"),
        ("/status/429", False, "http_4xx", "HTTP 429"),
        ("/status/404", True, "http_4xx", "HTTP 404"),
        ("/status/403", True, "http_4xx", "HTTP 403"),
        ("/hang-up", False, "connection", "cannot fetch"),
        ("/cut-short", False, "connection", f"connection closed after 20 of {len(PHOTO_BYTES)} bytes"),
    ],
)
def test_status_and_connection_errors_are_classed(server: str, path: str, permanent: bool, kind: str,
                                                  reason: str) -> None:
    error = _error(server + path)
    assert (error.permanent, error.kind) == (permanent, kind) and reason in error.reason


def test_connection_refused_is_transient() -> None:
    import socket

    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    error = _error(f"http://127.0.0.1:{port}/photo.png")
    assert (error.permanent, error.kind) == (False, "unreachable") and "cannot fetch" in error.reason


@pytest.mark.parametrize("path", ["/sleep/30", "/drip"])
def test_slow_responses_time_out_transiently(server: str, path: str) -> None:
    # Both take 30 s; the drip sends a byte every 0.1 s, so only one deadline for the whole
    # fetch (not a per-read timeout) ends it early. 15 s: room for a loaded machine.
    started = time.monotonic()
    error = _error(server + path, timeout=0.5)
    assert time.monotonic() - started < 15
    assert (error.permanent, error.kind) == (False, "timeout")
    assert "timed out" in error.reason or "took longer than 0.5 s" in error.reason


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_oversized_bodies_are_refused(server: str, path: str) -> None:
    error = _error(server + path, max_bytes=1000)
    assert (error.permanent, error.kind) == (True, "too_large") and "over the 1000-byte limit" in error.reason


def test_redirects_are_followed_up_to_the_limit(server: str) -> None:
    assert load_bytes(f"{server}/redirect/{MAX_REDIRECTS}") == PHOTO_BYTES
    for path in (f"/redirect/{MAX_REDIRECTS + 1}", "/loop"):
        error = _error(server + path)
        assert (error.permanent, error.kind) == (True, "bad_redirect") and "too many redirects" in error.reason


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_redirect_out_of_http_is_refused(server: str, scheme: str) -> None:
    error = _error(f"{server}/to/{scheme}")
    assert (error.permanent, error.kind) == (True, "bad_redirect")
    assert f"non-http(s) URL refused: {scheme}://" in error.reason


def test_local_files(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(PHOTO_BYTES)
    assert load_bytes(str(photo)) == load_bytes(photo.as_uri()) == PHOTO_BYTES
    missing = _error(str(tmp_path / "not-yet.png"))
    assert (missing.permanent, missing.kind) == (False, "missing_file") and "not found" in missing.reason  # may arrive
    directory = _error(str(tmp_path))
    assert (directory.permanent, directory.kind) == (True, "unsupported_location")
    large = _error(str(photo), max_bytes=10)
    assert large.kind == "too_large" and "over the 10-byte limit" in large.reason
    ftp = _error("ftp://127.0.0.1/photo.png")
    assert ftp.kind == "unsupported_location" and "unsupported image location scheme 'ftp'" in ftp.reason


def test_worker_retries_transient_fetch_errors_then_gives_up(conn, db_url, test_encoder, server: str) -> None:
    urls = {
        "RECOVERS": f"{server}/flaky/recovers/2",  # 500, 500, then the photo
        "ALWAYS_500": f"{server}/status/500",
        "GONE": f"{server}/status/404",
        "HTML": f"{server}/html",
        "OK": f"{server}/photo.png",
    }
    for sku, url in urls.items():
        conn.execute("INSERT INTO products (sku, image) VALUES (%s, %s)", (sku, url))
    options = WorkerOptions(batch_size=2, max_attempts=5, retry_base_delay_seconds=0)
    stats = Worker(db_url, test_encoder, options).run(once=True)
    assert (stats.embedded, stats.failed, stats.retried) == (2, 3, 2 + 4)
    embedded = {sku for (sku,) in conn.execute("SELECT sku FROM products WHERE embedding IS NOT NULL")}
    assert embedded == {"RECOVERS", "OK"}
    failures = {failure.sku: failure for failure in jobs.failures(conn)}
    assert failures["ALWAYS_500"].attempts == 5 and "HTTP 500" in failures["ALWAYS_500"].reason
    assert failures["GONE"].attempts == 1 and "HTTP 404" in failures["GONE"].reason
    assert failures["HTML"].attempts == 1 and "HTML page" in failures["HTML"].reason


def test_a_live_worker_keeps_its_claims_past_the_lease(conn, db_url, test_encoder, server: str) -> None:
    # The photo takes 10 s to fetch, the lease is 2 s: renewals must keep others off meanwhile.
    # Renewed every third of a lease, a claim outlives a renewal up to 1.3 s late (a 1 s lease:
    # 0.7 s, which a commit waiting on a busy disk of a loaded machine can take).
    conn.execute("INSERT INTO products (sku, image) VALUES ('SLOW', %s)", (f"{server}/sleep/10",))
    worker = Worker(db_url, test_encoder, WorkerOptions(batch_size=1, lease_seconds=2.0))
    done = threading.Thread(target=worker.run, kwargs={"once": True})
    done.start()
    try:
        deadline = time.monotonic() + 60  # a loaded machine may take a while to start the worker
        models = [list_models(conn)[0].id]
        while jobs.claimable(conn, models) and time.monotonic() < deadline:
            time.sleep(0.05)
        claimed_at = time.monotonic()
        assert not jobs.claimable(conn, models), "the worker never claimed the product"
        while time.monotonic() - claimed_at < 6:  # three lease lengths, within the 10 s fetch
            time.sleep(0.25)
            assert not jobs.claimable(conn, models), "a live worker's claim became claimable"
    finally:
        done.join()
    assert (worker.stats.embedded, worker.stats.failed, jobs.status(conn).pending) == (1, 0, 0)
