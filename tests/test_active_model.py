"""The catalog's active model lives in the database: recorded at migrate or first embed, used by
every process when PRODVEC_MODEL is unset, and a disagreeing PRODVEC_MODEL is refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import TEST_MODEL
from pgvector import HalfVector
from test_cli import _fails, _run_json
from test_migrations import _psql_schema, _schema_dump

from prodvec import Product, session
from prodvec.cli.main import main
from prodvec.db.active_model import ActiveModel, read_active_model, record_active_model
from prodvec.db.connection import ensure_database, with_dbname
from prodvec.db.migrate import alembic_config, embedding_dimensions
from prodvec.errors import ModelMismatch, ProdvecError, SchemaMismatch

#: Other random-weight models: one as wide as the test model (512), one wider (1024).
SAME_WIDTH_MODEL = "open_clip:ViT-B-16:none"
WIDER_MODEL = "open_clip:RN50:none"
RECORDED = ActiveModel(TEST_MODEL, 512, "single")
TIE = 2e-3  # halfvec storage


def _photos_as_products(conn: psycopg.Connection, photo_dir: Path) -> list[Path]:
    photos = sorted(photo_dir.iterdir())
    for photo in photos:
        conn.execute("INSERT INTO products (sku, category, image) VALUES (%s, %s, %s)",
                     (photo.stem, photo.stem.split("_")[0], str(photo)))
    return photos


def _nearest(conn: psycopg.Connection, encoder, photo: Path, k: int) -> tuple[list[str], np.ndarray]:
    """Brute force in numpy: the photo encoded as a plain (non-robust) single-view query
    against every stored vector."""
    from prodvec.encode.robust import encode_queries
    from prodvec.images.decode import decode

    query = encode_queries(encoder, [decode(photo.read_bytes(), target_size=encoder.input_size)], robust=False)[0, 0]
    rows = conn.execute("SELECT sku, embedding FROM products WHERE embedding IS NOT NULL").fetchall()
    vectors = np.stack([row[1].to_numpy().astype(np.float32) for row in rows])
    distances = 1 - vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = np.argsort(distances, kind="stable")[:k]
    return [rows[i][0] for i in order], distances[order]


def test_migrate_records_a_new_catalogs_model_and_model_reports_it(conn, db_url: str, capsys) -> None:
    conn.execute("DELETE FROM embedding_models")  # the test databases' template has the test model recorded
    assert read_active_model(conn) is None  # the schema alone records nothing
    assert _run_json(capsys, "model") == {"spec": None, "dimensions": None, "catalog_views": None,
                                          "embedded": 0, "products": 0, "coverage": None, "models": []}
    capsys.readouterr()
    assert main(["migrate"]) == 0  # PRODVEC_MODEL (the fixture's) chooses a new catalog's model
    assert "active model open_clip:ViT-B-32:none (512-d, single catalog views) (recorded)" in capsys.readouterr().out
    assert read_active_model(conn) == RECORDED

    conn.execute(
        "INSERT INTO products (sku, embedding, embedding_model) VALUES "
        "('a', %(vector)s, %(model)s), ('b', %(vector)s, %(model)s), "
        "('c', %(vector)s, %(model)s || '+multi-view'), ('d', NULL, NULL)",
        {"model": TEST_MODEL, "vector": HalfVector([0.5] * 512)},
    )
    report = _run_json(capsys, "model")
    assert report == {"spec": TEST_MODEL, "dimensions": 512, "catalog_views": "single",
                      "embedded": 3, "products": 4, "coverage": 0.75, "models": [
                          {"spec": TEST_MODEL, "dimensions": 512, "catalog_views": "single", "state": "active",
                           "embedded": 3, "pending": 0, "failed": 0, "behind": 0}]}


def test_processes_use_the_recorded_model_when_prodvec_model_is_unset(
    conn, db_url: str, photo_dir: Path, test_encoder, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos_as_products(conn, photo_dir)
    assert main(["worker", "--once"]) == 0  # no migrate: the first embed records PRODVEC_MODEL's
    assert read_active_model(conn) == RECORDED

    # Unset, the default model (hub weights, unreachable here) would fail: the recorded one answers.
    monkeypatch.delenv("PRODVEC_MODEL")
    red = photo_dir / "red.jpg"
    skus, distances = _nearest(conn, test_encoder, red, k=3)
    hits = _run_json(capsys, "search", "--image", str(red), "--no-robust", "-k", "3")["hits"]
    assert [hit["sku"] for hit in hits] == skus
    assert np.allclose([hit["distance"] for hit in hits], distances, atol=TIE)
    with session(db_url) as db:  # the Python API with no encoder passed: the same
        result = Product.similar_to(red, session=db, k=3, robust=False)
        assert [hit.product.sku for hit in result] == skus

    conn.execute("INSERT INTO products (sku, image) VALUES ('again', %s)", (str(photo_dir / "blue.jpg"),))
    assert main(["worker", "--once"]) == 0
    assert conn.execute("SELECT embedding_model FROM products WHERE sku = 'again'").fetchone() == (TEST_MODEL,)

    queries = photo_dir.parent / "queries.csv"
    queries.write_text("image,sku\n" + "".join(f"{photo},{photo.stem}\n" for photo in photos))
    scores = _run_json(capsys, "eval", str(queries), "--no-robust")
    assert (scores["model"], scores["n"], scores["recall@1"]) == (TEST_MODEL, len(photos), 1.0)

    # Another spelling of the same model agrees with it.
    monkeypatch.setenv("PRODVEC_MODEL", "open_clip:ViT-B/32:NONE")
    assert [hit["sku"] for hit in _run_json(capsys, "search", "--image", str(red), "--no-robust", "-k", "3")["hits"]] \
        == skus


def test_a_process_whose_model_disagrees_says_so_in_one_line(
    conn, db_url: str, photo_dir: Path, test_encoder, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos_as_products(conn, photo_dir)
    assert main(["migrate"]) == 0 and main(["worker", "--once"]) == 0
    queries = photo_dir.parent / "queries.csv"
    queries.write_text("image,sku\n" + "".join(f"{photo},{photo.stem}\n" for photo in photos))
    red = str(photo_dir / "red.jpg")

    monkeypatch.setenv("PRODVEC_MODEL", WIDER_MODEL)
    for argv in (["search", "--image", red], ["search", "--text", "a red square"], ["worker", "--once"],
                 ["eval", str(queries)], ["migrate"]):
        err = _fails(capsys, *argv)
        assert (f"PRODVEC_MODEL={WIDER_MODEL} disagrees with this catalog's active model, {TEST_MODEL} "
                "(512-d, single catalog views): unset PRODVEC_MODEL to use the active model, or change models "
                f"without stopping search: `prodvec model add {WIDER_MODEL}`, `prodvec worker`, then "
                f"`prodvec model activate {WIDER_MODEL}`") in err, argv
    assert issubclass(ModelMismatch, ProdvecError)
    with session(db_url) as db, pytest.raises(ModelMismatch, match="unset PRODVEC_MODEL"):
        Product.similar_to(red, session=db)
    # `prodvec model` still reports, and notes the disagreement.
    capsys.readouterr()
    assert main(["model", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["spec"] == TEST_MODEL and err.startswith("note: PRODVEC_MODEL=open_clip:RN50:none disagrees")

    monkeypatch.delenv("PRODVEC_MODEL")
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "multi")
    err = _fails(capsys, "search", "--image", red)
    assert "PRODVEC_CATALOG_VIEWS=multi disagrees" in err and "unset PRODVEC_CATALOG_VIEWS" in err
    with session(db_url) as db, pytest.raises(ModelMismatch, match="PRODVEC_CATALOG_VIEWS=multi"):
        Product.similar_to(red, session=db)

    # Nothing was changed by the refusals.
    assert read_active_model(conn) == RECORDED
    assert conn.execute("SELECT count(*) FROM products WHERE embedding_model = %s", (TEST_MODEL,)).fetchone() == (
        len(photos),)


def test_migrate_reset_embeddings_changes_the_active_model(conn, db_url: str, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["migrate"]) == 0
    conn.execute(
        "INSERT INTO products (sku, image, embedding, embedding_model) "
        "SELECT 'sku-' || i, '/p' || i || '.jpg', array_fill(0.5, ARRAY[512])::halfvec, %s "
        "FROM generate_series(1, 3) i",
        (TEST_MODEL,),
    )

    def vectors_and_queue() -> tuple[int, int]:
        return conn.execute("SELECT (SELECT count(*) FROM products WHERE embedding IS NOT NULL OR embedding_model "
                            "IS NOT NULL), (SELECT count(*) FROM embedding_jobs WHERE state = 'pending')").fetchone()

    assert vectors_and_queue() == (3, 0)
    # A model as wide as the column: the vectors must go anyway, and every product is queued.
    monkeypatch.setenv("PRODVEC_MODEL", SAME_WIDTH_MODEL)
    capsys.readouterr()
    assert main(["migrate", "--reset-embeddings"]) == 0
    assert f"was {TEST_MODEL} (512-d, single catalog views): every vector dropped" in capsys.readouterr().out
    assert read_active_model(conn) == ActiveModel(SAME_WIDTH_MODEL, 512, "single")
    assert vectors_and_queue() == (0, 3)

    monkeypatch.setenv("PRODVEC_MODEL", WIDER_MODEL)
    assert main(["migrate", "--reset-embeddings"]) == 0
    assert read_active_model(conn) == ActiveModel(WIDER_MODEL, 1024, "single")
    assert embedding_dimensions(conn) == embedding_dimensions(conn, "embedding_coarse") == 1024

    monkeypatch.delenv("PRODVEC_MODEL")  # the views alone change: the recorded model stays
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "multi")
    assert main(["migrate", "--reset-embeddings"]) == 0
    assert read_active_model(conn) == ActiveModel(WIDER_MODEL, 1024, "multi")
    assert main(["migrate"]) == 0  # agreeing settings: nothing to change

    # The SQL function refuses another model without drop_embeddings, for plain SQL callers too.
    with pytest.raises(SchemaMismatch, match=f"active model is {WIDER_MODEL}.*prodvec model add"):
        record_active_model(conn, RECORDED)
    assert read_active_model(conn) == ActiveModel(WIDER_MODEL, 1024, "multi")


def _at_0005(pg_server: str, name: str) -> str:
    from alembic import command

    ensure_database(pg_server, name)
    url = with_dbname(pg_server, name)
    command.upgrade(alembic_config(url), "0005")
    return url


@pytest.mark.parametrize(("models", "recorded"), [
    ([f"{TEST_MODEL}+multi-view"] * 2, ActiveModel(TEST_MODEL, 512, "multi")),
    ([TEST_MODEL] * 3, ActiveModel(TEST_MODEL, 512, "single")),
    ([TEST_MODEL, f"{TEST_MODEL}+multi-view"], None),  # ambiguous: nothing recorded
    ([TEST_MODEL, None], None),  # a vector of no known model: ambiguous too
])
def test_migration_records_the_model_an_embedded_catalog_names(
    pg_server: str, models: list[str | None], recorded: ActiveModel | None
) -> None:
    """0007 on a catalog embedded before it records the model its products' vectors name, when
    they all name the same one."""
    from alembic import command

    url = _at_0005(pg_server, f"schema_0007_{len(models)}_{len(set(models))}_{models[-1] is None}")
    with psycopg.connect(url, autocommit=True) as conn:
        for i, model in enumerate(models):
            conn.execute("INSERT INTO products (sku, embedding, embedding_model) "
                         "VALUES (%s, array_fill(0.5, ARRAY[512])::halfvec, %s)", (f"sku-{i}", model))
        conn.execute("INSERT INTO products (sku, embedding_model) VALUES ('no-vector', %s)", (WIDER_MODEL,))
        command.upgrade(alembic_config(url), "head")
        assert read_active_model(conn) == recorded


def test_active_model_migration_goes_down_and_up(pg_server: str) -> None:
    """0007's downgrade gives back exactly 0005's schema, and upgrading again the head's."""
    from alembic import command

    url = _at_0005(pg_server, "schema_0007_down_up")
    config = alembic_config(url)
    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        record_active_model(conn, RECORDED)
        command.downgrade(config, "0005")
        assert conn.execute("SELECT to_regclass('active_model')").fetchone() == (None,)
        assert read_active_model(conn) is None  # an older schema: nothing recorded, no error
        assert _schema_dump(url) == _psql_schema(pg_server, "schema_0007_0005", up_to="0005")
        command.upgrade(config, "head")
        assert _schema_dump(url) == _psql_schema(pg_server, "schema_0007_head")
