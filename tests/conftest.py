"""Shared fixtures: one embedded PostgreSQL for the whole run, a fresh database per test."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade

#: Random weights: plumbing only, never quality. 512-d like the default model.
TEST_MODEL = "open_clip:ViT-B-32:none"
TEST_DIMENSIONS = 512
#: A second random-weight model, of other dimensions, for model changes.
NARROW_MODEL = "open_clip:ViT-S-32-alt:none"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of an embedded server private to this test run.

    Its data lives outside pytest's tmp dirs: pytest resets /tmp/pytest-of-<user> to 0700,
    which locks out the server's own system user when tests run as root.
    """
    home = Path(tempfile.mkdtemp(prefix="prodvec-tests-"))
    url = ensure_server(home / "pgdata")
    yield url
    stop_server(home / "pgdata")
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """A data directory for a test's own embedded server, stopped and removed afterwards.

    Outside pytest's tmp dirs, as pg_server's: another pytest session resets
    /tmp/pytest-of-<user> to 0700, which locks the server's own system user out (as root)."""
    home = Path(tempfile.mkdtemp(prefix="prodvec-own-server-"))
    data_dir = home / "pgdata"
    try:
        yield data_dir
    finally:
        stop_server(data_dir)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(pg_server: str) -> str:
    """A migrated database that per-test databases are cloned from (fast: CREATE ... TEMPLATE),
    its active model the test model, as `prodvec migrate` records it."""
    from prodvec.db.active_model import ActiveModel, record_active_model

    ensure_database(pg_server, "prodvec_template")
    url = with_dbname(pg_server, "prodvec_template")
    upgrade(url, TEST_DIMENSIONS)
    with psycopg.connect(url, autocommit=True) as conn:
        record_active_model(conn, ActiveModel(TEST_MODEL, TEST_DIMENSIONS, "single"))
    return "prodvec_template"


def record_catalog_views(conn: psycopg.Connection, catalog_views: str) -> None:
    """Make the test database's active model the test model under other catalog views, as
    `PRODVEC_CATALOG_VIEWS=… prodvec migrate --reset-embeddings` does (its vectors dropped)."""
    from prodvec.db.active_model import ActiveModel, record_active_model

    record_active_model(conn, ActiveModel(TEST_MODEL, TEST_DIMENSIONS, catalog_views),  # type: ignore[arg-type]
                        drop_embeddings=True)


@pytest.fixture
def db_url(pg_server: str, migrated_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database for one test; DATABASE_URL points at it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    url = with_dbname(pg_server, name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PRODVEC_MODEL", TEST_MODEL)
    monkeypatch.setenv("PRODVEC_DEVICE", "cpu")
    yield url
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, pgvector types registered."""
    with connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder of small, distinct product-like photos: red/green/blue squares and stripes."""
    from PIL import Image, ImageDraw

    folder = tmp_path / "photos"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "black": (10, 10, 10)}
    for name, rgb in colours.items():
        image = Image.new("RGB", (64, 48), "white")
        draw = ImageDraw.Draw(image)
        draw.rectangle((12, 8, 52, 40), fill=rgb)
        image.save(folder / f"{name}.jpg", quality=90)
        stripes = Image.new("RGB", (48, 64), "white")
        draw = ImageDraw.Draw(stripes)
        for x in range(0, 48, 8):
            draw.rectangle((x, 0, x + 3, 63), fill=rgb)
        stripes.save(folder / f"{name}_stripes.png")
    return folder


@pytest.fixture(autouse=True)
def _no_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the developer's own ~/.local/share/prodvec from a test."""
    monkeypatch.setenv("PRODVEC_HOME", os.fspath(tmp_path / "home"))


@pytest.fixture(scope="session")
def test_encoder():
    """The random-weight ViT-B-32 the test databases are sized for (loaded once per run).
    On the CPU unless PRODVEC_TEST_DEVICE says otherwise (cuda: the worker's GPU paths)."""
    from prodvec.encode import load_encoder

    return load_encoder(TEST_MODEL, os.environ.get("PRODVEC_TEST_DEVICE", "cpu"))


class QuietHTTPServer(ThreadingHTTPServer):
    """A test server whose clients hang up on purpose (timeouts, size caps): a reply that finds the
    socket closed is expected, and must not print a traceback into whichever test runs next."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serve_process(options: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                  start_seconds: float, log_stdout: bool = False) -> Iterator[str]:
    """A real `prodvec serve OPTIONS` process on a free loopback port, its stderr (and stdout, where
    uvicorn logs requests, with ``log_stdout``) in ``log_path``; yields its base URL once it listens
    (uvicorn listens after the app started), and stops it."""
    with socket.socket() as probe:  # a port free now; `prodvec serve` says so if it is taken meanwhile
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["serve", *options, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty server never blocks on it
        server = subprocess.Popen([sys.executable, "-m", "prodvec.cli.main", *command], cwd=cwd, env=env,
                                  stdout=log if log_stdout else subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            assert server.poll() is None, f"prodvec {' '.join(command)} exited: {log_path.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"prodvec {' '.join(command)} did not listen in {start_seconds} s"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
