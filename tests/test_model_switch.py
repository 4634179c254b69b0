"""Blue-green model changes (migrations/0009): a model added beside the active one is backfilled
by the worker while every search keeps answering from the active model, then activated and
rolled back in short switches; the schema goes down and up."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import NARROW_MODEL, TEST_MODEL
from test_cli import _fails, _prodvec, _run_json
from test_migrations import _psql_schema, _schema_dump
from test_service import running, settings_for, upload

from prodvec import Product, session
from prodvec.cli.main import main
from prodvec.db.active_model import ActiveModel
from prodvec.db.connection import ensure_database, with_dbname
from prodvec.db.migrate import alembic_config, embedding_dimensions, upgrade
from prodvec.db.model_registry import add_model, list_models
from prodvec.encode import load_encoder
from prodvec.search import Sku
from prodvec.service.app import create_app
from prodvec.sql import queries
from prodvec.worker.pipeline import Worker, WorkerOptions

OPTIONS = WorkerOptions(batch_size=4, poll_seconds=0.2)


def _load(spec: str):
    return load_encoder(spec, "cpu")


def _catalog(conn: psycopg.Connection, photo_dir: Path, copies: int = 2) -> list[Path]:
    photos = sorted(photo_dir.iterdir())
    for copy in range(copies):
        for i, photo in enumerate(photos):
            conn.execute("INSERT INTO products (sku, category, price, stock, image) VALUES (%s, %s, %s, 1, %s)",
                         (f"{photo.stem}-{copy}", photo.stem.split("_")[0], 10 + i, str(photo)))
    return photos


def _vectors_of_current_images(conn: psycopg.Connection, suffix: str) -> tuple[int, int]:
    """(products with an image, those whose vector in the columns ending in ``suffix`` was made
    from their current image)."""
    return conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE embedding{suffix} IS NOT NULL AND embedded_image{suffix} = image) "
        "FROM products WHERE image <> ''"
    ).fetchone()


class _Searches:
    """Threads searching by photo, sku and filter until stopped; every result's hits must come
    from one model, and none may fail."""

    def __init__(self, db_url: str, photo: Path, sku: str) -> None:
        self.errors: list[BaseException] = []
        self.models: Counter[str] = Counter()
        self.mixed: list[set[str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(db_url, query, where))
                         for query, where in ((photo, False), (Sku(sku), False), (photo, True))]

    def __enter__(self) -> _Searches:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def wait_for(self, model: str, searches: int = 3, timeout: float = 120) -> None:
        """Until ``searches`` more answers came from ``model``."""
        target = self.models[model] + searches
        deadline = time.monotonic() + timeout
        while self.models[model] < target and time.monotonic() < deadline and not self.errors:
            time.sleep(0.05)
        assert not self.errors, self.errors
        assert self.models[model] >= target, dict(self.models)

    def _run(self, db_url: str, query: object, filtered: bool) -> None:
        where = [Product.price < 14] if filtered else []
        while not self._stop.is_set():
            try:
                with session(db_url) as db:
                    result = Product.similar_to(query, session=db, k=4, where=where, robust=False)
                    made_by = {hit.product.embedding_model for hit in result}
            except BaseException as exc:
                self.errors.append(exc)
                return
            if len(made_by) != 1 or len(result) != 4:
                self.mixed.append(made_by)
            else:
                self.models[made_by.pop() or ""] += 1


def test_a_model_change_never_takes_search_down(conn, db_url: str, photo_dir: Path, test_encoder, capsys,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prodvec.service")
    monkeypatch.delenv("PRODVEC_MODEL")  # processes follow the catalog's active model
    photos = _catalog(conn, photo_dir)
    Worker(db_url, test_encoder, OPTIONS).run(once=True)
    total = len(photos) * 2
    assert _vectors_of_current_images(conn, "") == (total, total)

    with _Searches(db_url, photos[0], f"{photos[1].stem}-0") as searches:
        searches.wait_for(TEST_MODEL)
        assert main(["model", "add", NARROW_MODEL]) == 0
        added = capsys.readouterr().out
        assert f"added {NARROW_MODEL} (256-d, single catalog views): {total} product(s) queued" in added
        narrow = list_models(conn)[1]
        # Indexes of its own, built beside the active model's.
        indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'products'")}
        assert {f"m{narrow.id}_products_embedding_hnsw", f"m{narrow.id}_products_category_price"} <= indexes
        assert f"lacks vectors for {total} product(s)" in _fails(capsys, "model", "activate", NARROW_MODEL)

        # Two workers backfill side by side: every (product, model) job is claimed once.
        workers = [Worker(db_url, test_encoder, OPTIONS, loader=_load) for _ in range(2)]
        threads = [threading.Thread(target=worker.run, kwargs={"once": True}) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(worker.stats.embedded for worker in workers) == total
        assert _vectors_of_current_images(conn, f"_m{narrow.id}") == (total, total)
        assert main(["model", "add", NARROW_MODEL]) == 0  # again: nothing is queued twice
        assert "was added before: 0 product(s) without its vector queued" in capsys.readouterr().out

        # An import adds and changes products while a worker runs: both models follow.
        worker = Worker(db_url, test_encoder, OPTIONS, loader=_load)
        background = threading.Thread(target=worker.run)
        background.start()
        conn.execute("INSERT INTO products (sku, category, price, stock, image) VALUES ('NEW-1', 'red', 5, 1, %s)",
                     (str(photos[2]),))
        conn.execute("UPDATE products SET image = %s WHERE sku = %s", (str(photos[3]), f"{photos[0].stem}-1"))
        conn.execute("INSERT INTO products (sku, image) VALUES ('GONE', %s)", (str(photos[4]),))
        conn.execute("DELETE FROM products WHERE sku = 'GONE'")  # its jobs for both models go with it
        deadline = time.monotonic() + 120
        while conn.execute("SELECT count(*) FROM embedding_jobs").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        worker.stop()
        background.join()
        assert _vectors_of_current_images(conn, "") == (total + 1, total + 1)
        assert _vectors_of_current_images(conn, f"_m{narrow.id}") == (total + 1, total + 1)
        report = _run_json(capsys, "model")
        assert [(m["spec"], m["state"], m["embedded"], m["behind"]) for m in report["models"]] == [
            (TEST_MODEL, "active", total + 1, 0), (NARROW_MODEL, "ready", total + 1, 0)]

        # The switch: searches go on, from the new model at once, in process and in the service.
        with running(create_app(settings_for(db_url), encoder=test_encoder)) as base, \
                httpx.Client(base_url=base, timeout=120) as client:
            photo = photos[0].read_bytes()
            assert upload(client, photo, "photo.jpg").json()["model"] == TEST_MODEL
            # The server loads the added model ahead, so the switch loads nothing.
            assert _settled_models(client, 2) == [(TEST_MODEL, True, None), (NARROW_MODEL, True, None)]
            assert [m["catalog_views"] for m in client.get("/v1/status").json()["models"]] == ["single", "single"]
            caplog.clear()
            assert main(["model", "activate", NARROW_MODEL]) == 0
            out = capsys.readouterr().out
            assert f"activated {NARROW_MODEL}" in out and "switched in" in out
            assert embedding_dimensions(conn) == 256
            searches.wait_for(NARROW_MODEL)
            similar = client.get("/v1/products/NEW-1/similar", params={"k": 3})  # the stored vectors': no encoder
            assert similar.json()["model"] == NARROW_MODEL, similar.text
            answer = upload(client, photo, "photo.jpg")
            assert answer.status_code == 200 and answer.json()["model"] == NARROW_MODEL, answer.text
            assert client.get("/readyz").json()["ready"]
            assert "searches encode with it" in caplog.text and "not loaded ahead" not in caplog.text
            _check_more_like_this(conn, "NEW-1", total)  # the plain SQL recipe, on the new vectors
            states = [(m["spec"], m["state"]) for m in _run_json(capsys, "model")["models"]]
            assert states == [(NARROW_MODEL, "active"), (TEST_MODEL, "previous, rollback target")]
            # A shell still naming the old model (its own process: the searching threads share this one's).
            old_shell = _prodvec(os.environ | {"PRODVEC_MODEL": TEST_MODEL}, "search", "--image", str(photos[0]))
            assert old_shell.returncode == 2, old_shell.stderr
            assert f"`prodvec model activate {TEST_MODEL}` (it is kept, with its vectors)" in old_shell.stderr

            assert main(["model", "rollback"]) == 0
            assert f"activated {TEST_MODEL}" in capsys.readouterr().out
            assert embedding_dimensions(conn) == 512
            searches.wait_for(TEST_MODEL)
            answer = client.post("/v1/search", json={"text": "a red square", "k": 3})
            assert answer.status_code == 200 and answer.json()["model"] == TEST_MODEL, answer.text
            _check_more_like_this(conn, "NEW-1", total)

    assert not searches.errors and not searches.mixed, (searches.errors, searches.mixed)
    # The active model's indexes have their names again, on its columns.
    assert conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'products_embedding_hnsw'").fetchone()[
        0].endswith("USING hnsw (embedding halfvec_cosine_ops) WITH (m='32', ef_construction='200')")

    assert main(["model", "drop", NARROW_MODEL]) == 0
    assert [model.spec for model in list_models(conn)] == [TEST_MODEL]
    assert not conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = 'products'::regclass "
                            "AND attname ~ '_m[0-9]+$' AND NOT attisdropped").fetchall()
    assert "is the active model" in _fails(capsys, "model", "drop", TEST_MODEL)


def _settled_models(client: httpx.Client, count: int) -> list[tuple[str, bool, str | None]]:
    """/v1/status's models once the server has looked at the catalog's ``count`` models and
    loaded those it can (it looks every 10 s, the first time as it starts)."""
    deadline = time.monotonic() + 120
    while True:
        models = [(m["spec"], m["loaded"], m["problem"]) for m in client.get("/v1/status").json()["models"]]
        if len(models) == count and all(loaded or problem for _, loaded, problem in models):
            return models
        assert time.monotonic() < deadline, models
        time.sleep(0.2)


def _check_more_like_this(conn: psycopg.Connection, sku: str, others: int) -> None:
    rows = conn.execute(queries("search.sql")["more_like_sku"], {"sku": sku}).fetchall()
    distances = [row[3] for row in rows]
    assert len(rows) == min(10, others) and sku not in {row[1] for row in rows}
    assert None not in distances and distances == sorted(distances)


def test_a_worker_skips_models_it_cannot_load(conn, db_url: str, photo_dir: Path, test_encoder,
                                              caplog: pytest.LogCaptureFixture, capsys) -> None:
    caplog.set_level(logging.INFO, logger="prodvec.service")
    _catalog(conn, photo_dir, copies=1)
    missing = ActiveModel("open_clip:ViT-B-32:/nowhere/weights.pt", 512, "single")
    added, queued, _ = add_model(db_url, missing)
    assert queued == len(list(photo_dir.iterdir()))
    with caplog.at_level(logging.WARNING, logger="prodvec.worker"):
        stats = Worker(db_url, test_encoder, OPTIONS, loader=_load).run(once=True)  # returns: nothing it can do
    assert stats.embedded == queued and stats.failed == 0  # the active model's, none of the other's
    assert any(f"skipping {added}" in record.message for record in caplog.records)
    report = _run_json(capsys, "model")
    assert report["models"][1]["pending"] == queued and report["models"][1]["failed"] == 0
    assert main(["model"]) == 0  # its jobs stay: the listing says where to look
    assert "their log says why" in capsys.readouterr().err
    assert "lacks vectors" in _fails(capsys, "model", "activate", missing.spec)
    assert "no previous model" in _fails(capsys, "model", "rollback")
    # A server says so before anyone activates it, and serves the active model meanwhile.
    with running(create_app(settings_for(db_url), encoder=test_encoder)) as base, \
            httpx.Client(base_url=base, timeout=120) as client:
        (active, *_), (spec, loaded, problem) = _settled_models(client, 2)
        assert active == TEST_MODEL and (spec, loaded) == (missing.spec, False)
        assert problem is not None and "no checkpoint file at /nowhere/weights.pt" in problem
        photo = sorted(photo_dir.iterdir())[0]
        found = client.post("/v1/search", json={"sku": f"{photo.stem}-0", "k": 1})
        assert found.status_code == 200 and found.json()["model"] == TEST_MODEL, found.text
        # Activated anyway: searches that need the encoder answer 503 with what to do, trying
        # the load again at most every 10 s, not on every search.
        assert main(["model", "activate", missing.spec, "--force"]) == 0
        caplog.clear()
        for _ in range(2):
            failed = upload(client, photo.read_bytes(), photo.name)
            assert failed.status_code == 503, failed.text
            assert f"cannot load the catalog's active model {missing.spec}" in failed.json()["error"]
            assert "`prodvec model rollback`" in failed.json()["error"] and "PRODVEC_MODEL" not in failed.text
        # One load at most: the failed preload seconds ago counts as a try.
        assert sum("loading" in record.message for record in caplog.records) <= 1
        ready = client.get("/readyz").json()
        assert ready["model_loaded"] is False and "prodvec model rollback" in ready["problem"]
        assert main(["model", "rollback"]) == 0
        assert upload(client, photo.read_bytes(), photo.name).json()["model"] == TEST_MODEL
    assert "no model" in _fails(capsys, "model", "activate", "open_clip:RN50:none")


def test_model_versions_migration_goes_down_and_up(pg_server: str) -> None:
    """0009's downgrade (added models dropped) gives back exactly 0008's schema, and upgrading
    again the head's; the active model and its jobs survive both ways."""
    from alembic import command

    ensure_database(pg_server, "schema_0009_down_up")
    url = with_dbname(pg_server, "schema_0009_down_up")
    upgrade(url, 512)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT prodvec_set_active_model(%s, 512, 'single')", (TEST_MODEL,))
        conn.execute("INSERT INTO products (sku, image) VALUES ('a', '/a.jpg')")
    add_model(url, ActiveModel(NARROW_MODEL, 256, "single"))
    config = alembic_config(url)
    command.downgrade(config, "0008")
    assert _schema_dump(url) == _psql_schema(pg_server, "schema_0009_0008", up_to="0008")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT spec FROM active_model").fetchall() == [(TEST_MODEL,)]
        assert conn.execute("SELECT count(*) FROM embedding_jobs").fetchone() == (1,)
    command.upgrade(config, "head")
    assert _schema_dump(url) == _psql_schema(pg_server, "schema_0009_head")
    with psycopg.connect(url, autocommit=True) as conn:
        assert json.loads(json.dumps(conn.execute("SELECT spec, active FROM embedding_models").fetchall())) == [
            [TEST_MODEL, True]]
        assert conn.execute("SELECT count(*) FROM embedding_jobs").fetchone() == (1,)
