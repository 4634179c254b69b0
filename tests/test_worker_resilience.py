"""The worker under stress: kill -9, SIGTERM, several processes, NOTIFY wake-ups, a database
restart and the Prometheus endpoint. Real `prodvec worker` processes where the behaviour is
about processes (signals, death, sharing a queue).

Every embedding write is counted by a test-only trigger (products.embedding UPDATEs logged to a
side table), so "no product embedded twice" is checked at the source, not inferred.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.errors import DatabaseUnavailable
from prodvec.worker.metrics import WorkerMetrics, serve
from prodvec.worker.pipeline import Worker, WorkerOptions

SUMMARY = re.compile(r"worker: embedded (\d+), failed (\d+), retried (\d+), ([\d.]+) img/s")
#: A poll interval no test waits for: what happens sooner was woken by NOTIFY or a signal.
NEVER_POLL_S = 3600
#: How long a test waits for what NOTIFY or a signal brings about before failing: far below
#: NEVER_POLL_S and far above what a loaded 2-core machine needs, so it proves without flaking.
WAKE_WAIT_S = 180


# --- helpers -------------------------------------------------------------------------------

def _count_writes(conn: psycopg.Connection) -> None:
    """Test-only: log every UPDATE that sets products.embedding into embedding_writes."""
    conn.execute("CREATE TABLE embedding_writes (product_id bigint NOT NULL, at timestamptz DEFAULT clock_timestamp())")
    conn.execute(
        "CREATE FUNCTION log_embedding_write() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO embedding_writes (product_id) VALUES (NEW.id); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER log_embedding_write AFTER UPDATE OF embedding ON products FOR EACH ROW"
        " WHEN (NEW.embedding IS NOT NULL) EXECUTE FUNCTION log_embedding_write()"
    )


def _writes_per_product(conn: psycopg.Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT product_id, count(*) FROM embedding_writes GROUP BY product_id").fetchall())


def _insert_products(conn: psycopg.Connection, photos: list[Path], count: int, prefix: str) -> list[int]:
    """``count`` products in ONE statement (one NOTIFY), cycling through the photos."""
    skus = [f"{prefix}{i:04d}" for i in range(count)]
    images = [str(photos[i % len(photos)]) for i in range(count)]
    rows = conn.execute(
        "INSERT INTO products (sku, image) SELECT * FROM unnest(%s::text[], %s::text[]) RETURNING id", (skus, images)
    ).fetchall()
    return [row[0] for row in rows]


def _count(conn: psycopg.Connection, sql: str) -> int:
    return conn.execute(sql).fetchone()[0]


def _embedded(conn: psycopg.Connection) -> int:
    return _count(conn, "SELECT count(*) FROM products WHERE embedding IS NOT NULL")


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until ``condition()``; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def _worker_process(url: str, *args: str, stderr: int | None = subprocess.PIPE) -> subprocess.Popen:
    env = os.environ | {"DATABASE_URL": url, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "prodvec.cli.main", "worker", *args],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=stderr is not None,
    )


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the process (kill it if it hangs, failing the test) and return rc, stderr."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"worker did not exit within {timeout:.0f} s:\n{err}") from None
    return process.returncode, err or ""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from metrics:\n{text}"
    return float(match.group(1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def photos(photo_dir: Path) -> list[Path]:
    return sorted(photo_dir.iterdir())


@pytest.fixture
def second_db(pg_server: str, migrated_template: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    yield with_dbname(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- tests ---------------------------------------------------------------------------------

def test_kill9_claims_come_back_after_the_lease_and_sigterm_hands_back(
    conn, db_url, second_db, photos, test_encoder
) -> None:
    """Two real workers at once, each on its own database: one is killed with SIGKILL mid-run,
    the other (`--once` on a terminal) gets SIGTERM mid-run."""
    lease = 3.0
    killed_ids = _insert_products(conn, photos, 48, "K")
    _count_writes(conn)
    with connect(second_db, autocommit=True) as conn2:
        _insert_products(conn2, photos, 48, "T")
        _count_writes(conn2)
    master, slave = pty.openpty()  # the --once worker's stderr is a terminal: progress bar
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column one
    doomed = _worker_process(db_url, "--lease-seconds", str(lease), "--batch-size", "4")
    polite = _worker_process(second_db, "--once", "--batch-size", "4", stderr=slave)
    os.close(slave)
    terminal: list[bytes] = []
    reader = threading.Thread(target=lambda: _drain(master, terminal), daemon=True)
    reader.start()
    try:
        # SIGKILL as soon as it has written something and holds claims.
        _wait_for(lambda: _embedded(conn) >= 4 and _count(
            conn, "SELECT count(*) FROM embedding_jobs WHERE leased_until > now()") > 0, 90, "the first write-back")
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait(10)
        stranded = _count(conn, "SELECT count(*) FROM embedding_jobs WHERE leased_until > now()")
        assert stranded > 0  # the dead worker's claims are held...

        with connect(second_db, autocommit=True) as conn2:
            _wait_for(lambda: _embedded(conn2) >= 8, 90, "the --once worker's first write-backs")
            polite.send_signal(signal.SIGTERM)
            rc, _ = _finish(polite, 120)
            reader.join(5)
            assert rc == 0
            # Nothing stays leased: the batch in hand was written, claims prepared ahead released
            # with their attempt not counted; it really stopped mid-way.
            assert _count(conn2, "SELECT count(*) FROM embedding_jobs WHERE leased_until IS NOT NULL") == 0
            assert _count(conn2, "SELECT count(*) FROM embedding_jobs WHERE attempts <> 0") == 0
            pending = _count(conn2, "SELECT count(*) FROM embedding_jobs WHERE state = 'pending'")
            embedded2 = _embedded(conn2)
            assert pending > 0 and embedded2 + pending == 48
            assert set(_writes_per_product(conn2).values()) == {1}
        output = b"".join(terminal).decode(errors="replace")
        summary = SUMMARY.search(output)
        assert summary, output
        assert int(summary.group(1)) == embedded2 and summary.group(2) == "0" and float(summary.group(4)) > 0
        assert re.search(r"embedding: +\d+%\|", output), output  # tqdm's bar on the terminal
        assert "worker: interrupted (SIGTERM)" in output, output

        # ...until the lease runs out, then another worker takes them: none stranded, none twice.
        time.sleep(max(0.0, killed_at + lease + 0.2 - time.monotonic()))
        assert _count(conn, "SELECT count(*) FROM embedding_jobs WHERE leased_until > now()") == 0
        stats = Worker(db_url, test_encoder, WorkerOptions(batch_size=16)).run(once=True)
        assert stats.failed == 0
        assert _embedded(conn) == 48 and _count(conn, "SELECT count(*) FROM embedding_jobs") == 0
        assert _writes_per_product(conn) == {product: 1 for product in killed_ids}
    finally:
        for process in (doomed, polite):
            if process.poll() is None:
                process.kill()
                process.wait()
        os.close(master)


def _drain(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the other end is closed
            return
        if not chunk:
            return
        into.append(chunk)


def test_workers_share_the_queue_woken_by_notify(conn, db_url, photos) -> None:
    """Two idle worker processes wake on NOTIFY, split one queue without embedding anything
    twice, serve metrics, and leave on SIGTERM without waiting for their next poll.

    They poll once an hour, so anything done within the (generous) waits below was done on
    NOTIFY or SIGTERM: no time bound that a loaded machine could break is asserted."""
    _count_writes(conn)
    port = _free_port()
    workers = [
        _worker_process(db_url, "--poll-seconds", str(NEVER_POLL_S), "--batch-size", "4", "--metrics-port", str(port)),
        _worker_process(db_url, "--poll-seconds", str(NEVER_POLL_S), "--batch-size", "4"),
    ]
    try:
        mine = conn.info.backend_pid
        # Both connected (2 connections each) and the metrics server is up.
        _wait_for(lambda: _count(conn, f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                       f" AND pid <> {mine}") >= 4, 180, "both workers to connect", interval=0.2)
        _wait_for(lambda: _port_open(port), 60, "the metrics port")
        time.sleep(0.5)  # both are now idle in their hour-long wait

        product_ids = _insert_products(conn, photos, 32, "S")
        _wait_for(lambda: _embedded(conn) == 32, WAKE_WAIT_S, "32 products embedded (woken by NOTIFY)")
        assert _writes_per_product(conn) == {product: 1 for product in product_ids}

        time.sleep(1.0)  # idle again; a single new product must be picked up too
        late = _insert_products(conn, photos, 1, "LATE")[0]
        _wait_for(lambda: _embedded(conn) == 33, WAKE_WAIT_S, "the late product (woken by NOTIFY)")
        assert _writes_per_product(conn)[late] == 1

        metrics = _scrape(port)  # listening on 0.0.0.0 by default, scraped on 127.0.0.1
        assert _sample(metrics, 'prodvec_queue_depth{state="pending"}') == 0
        assert _sample(metrics, "prodvec_database_up") == 1
        scraped_embedded = _sample(metrics, "prodvec_embedded_total")
        assert _sample(metrics, "prodvec_batch_seconds_count") >= scraped_embedded / 4
        assert _sample(metrics, 'prodvec_batch_encode_seconds_bucket{le="+Inf"}') == _sample(
            metrics, "prodvec_batch_encode_seconds_count")

        for process in workers:
            process.send_signal(signal.SIGTERM)
        results = [_finish(process, WAKE_WAIT_S) for process in workers]  # not after the hour's poll
        counts = []
        for rc, err in results:
            assert rc == 0, err
            assert "worker: interrupted (SIGTERM)" in err, err
            summary = SUMMARY.search(err)
            assert summary, err
            counts.append(int(summary.group(1)))
        assert sum(counts) == 33 and all(count > 0 for count in counts), counts  # both took part
        assert counts[0] == scraped_embedded
        assert _count(conn, "SELECT count(*) FROM embedding_jobs") == 0
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_worker_survives_a_database_restart(tmp_path: Path, pgdata: Path, photos, test_encoder) -> None:
    """A worker on its own embedded server: the server stops mid-run and comes back; the worker
    waits, reconnects and embeds everything, old and new; metrics say what happened."""
    url = with_dbname(ensure_server(pgdata), "restart")
    metrics_server = None
    try:
        ensure_database(with_dbname(url, "postgres"), "restart")
        upgrade(url, 512)
        (tmp_path / "broken.jpg").write_text("not a jpeg")
        with connect(url, autocommit=True) as db:
            _insert_products(db, photos, 24, "R")
            db.execute("INSERT INTO products (sku, image) VALUES ('BROKEN', %s)", (str(tmp_path / "broken.jpg"),))
        metrics = WorkerMetrics()
        metrics_server = serve(metrics, url, port=0, host="127.0.0.1")
        options = WorkerOptions(batch_size=4, lease_seconds=3, poll_seconds=30, reconnect_max_seconds=1)
        worker = Worker(url, test_encoder, options, metrics=metrics)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()

        def embedded() -> int:
            try:
                with connect(url, autocommit=True) as db:
                    return _embedded(db)
            except psycopg.Error:
                return -1

        _wait_for(lambda: embedded() >= 8, 180, "the first write-backs", interval=0.1)
        assert stop_server(pgdata)
        time.sleep(2.0)
        assert thread.is_alive()
        down = _scrape(metrics_server.port)
        assert _sample(down, "prodvec_database_up") == 0 and "prodvec_queue_depth" not in down
        ensure_server(pgdata)
        with connect(url, autocommit=True) as db:
            _insert_products(db, photos, 12, "AFTER")
        _wait_for(lambda: embedded() == 36, 180, "all 36 products embedded after the restart", interval=0.2)
        with connect(url, autocommit=True) as db:
            _wait_for(lambda: _count(db, "SELECT count(*) FROM embedding_jobs WHERE state = 'failed'") == 1,
                      120, "the broken image to fail")
            assert _count(db, "SELECT count(*) FROM embedding_jobs") == 1
        assert thread.is_alive()

        scraped = _scrape(metrics_server.port)
        assert _sample(scraped, "prodvec_reconnects_total") >= 1
        assert _sample(scraped, "prodvec_embedded_total") == 36 == worker.stats.embedded
        assert _sample(scraped, 'prodvec_failures_total{reason="not_an_image"}') == 1
        assert _sample(scraped, 'prodvec_queue_depth{state="failed"}') == 1
        assert _sample(scraped, 'prodvec_queue_depth{state="pending"}') == 0
        worker.stop()
        thread.join(WAKE_WAIT_S)
        assert not thread.is_alive()
    finally:
        if metrics_server:
            metrics_server.close()
        stop_server(pgdata)


def test_worker_once_gives_up_on_a_database_that_stays_down(tmp_path: Path, test_encoder) -> None:
    """`worker --once` must end: past the longest reconnect wait it raises instead of waiting on.
    Counted in connection attempts, not time: the first fails and waits 1 s, the second finds
    the wait at its 2 s limit and gives up."""
    url = f"postgresql://postgres@/prodvec?host={tmp_path / 'no-server-here'}"
    attempts: list[str] = []
    handler = _Recorder(attempts)
    logger = logging.getLogger("prodvec.worker")
    logger.addHandler(handler)
    try:
        with pytest.raises(DatabaseUnavailable, match="stayed unavailable"):
            Worker(url, test_encoder, WorkerOptions(reconnect_max_seconds=2)).run(once=True)
    finally:
        logger.removeHandler(handler)
    assert [message.rsplit(";", 1)[1].strip() for message in attempts] == ["reconnecting in 1 s"]


class _Recorder(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("database unavailable"):
            self.into.append(record.getMessage())
