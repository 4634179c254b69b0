"""Schema migrations: alembic runs the plain SQL files in migrations/, in order."""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import psycopg

from prodvec.errors import ConfigError, SchemaMismatch


def _shipped_dir(package: str, folder: str) -> Path:
    """A schema folder of the repository (pyproject.toml ships ``folder`` as ``package``).

    An installed wheel has it as that package; a checkout and an editable install (whose
    import hook does not map folders without an ``__init__.py``) have it beside prodvec/.
    """
    spec = importlib.util.find_spec(package)
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    beside = Path(__file__).resolve().parents[2] / folder
    if beside.is_dir():
        return beside
    raise ConfigError(f"{package} is missing from this prodvec install: reinstall prodvec")


MIGRATIONS_DIR = _shipped_dir("prodvec.migrations", "migrations")
ALEMBIC_DIR = _shipped_dir("prodvec.alembic", "alembic")


def execute_sql_file(name: str) -> None:
    """Run one migrations/*.sql file inside the current alembic revision's transaction."""
    from alembic import op

    sql = (MIGRATIONS_DIR / name).read_text()
    # psycopg's own cursor, no parameters: no placeholder parsing (the SQL has literal %s),
    # so the file runs exactly as psql runs it, in the revision's transaction.
    driver = op.get_bind().connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigError("prodvec migrations run on psycopg 3 connections (postgresql+psycopg://)")
    with driver.cursor() as cursor:
        cursor.execute(sql)


def alembic_config(url: str):  # -> alembic.config.Config
    from alembic.config import Config

    from prodvec.db.connection import sqlalchemy_url

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    """`alembic upgrade head`: the schema, whatever the model."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def upgrade(url: str, dimensions: int, *, reset_embeddings: bool = False) -> bool:
    """`alembic upgrade head`, then size the embedding column for the model.

    Returns True when the column's dimensions changed (every product is requeued then).
    """
    upgrade_schema(url)
    with psycopg.connect(url) as conn, raised_as_schema_mismatch():
        changed = conn.execute(
            "SELECT prodvec_set_embedding_dimensions(%s, %s)", (dimensions, reset_embeddings)
        ).fetchone()
    return bool(changed and changed[0])


@contextlib.contextmanager
def raised_as_schema_mismatch() -> Iterator[None]:
    """The schema functions' RAISE EXCEPTIONs (message and hint) as SchemaMismatch."""
    try:
        yield
    except psycopg.errors.RaiseException as exc:
        hint = exc.diag.message_hint or ""
        raise SchemaMismatch(f"{exc.diag.message_primary}. {hint}".strip()) from exc


def embedding_dimensions(conn: psycopg.Connection, column: str = "embedding") -> int | None:
    """The dimensions of a products vector column, or None before `prodvec migrate` (made it)."""
    row = conn.execute(
        "SELECT atttypmod FROM pg_attribute "
        "WHERE attrelid = to_regclass('products') AND attname = %s AND NOT attisdropped",
        (column,),
    ).fetchone()
    return row[0] if row else None
