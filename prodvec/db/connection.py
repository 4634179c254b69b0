"""Connections to the configured database, with pgvector's psycopg adapters registered."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from prodvec.config import Settings, load_settings
from prodvec.errors import ConfigError, DatabaseUnavailable, SchemaMismatch

#: Database prodvec creates on the embedded server (its own, so `postgres` stays clean).
EMBEDDED_DATABASE = "prodvec"
#: URL schemes libpq (and so psycopg) reads as PostgreSQL URLs.
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: Seconds a connection attempt waits for a server that does not answer (libpq waits for the
#: operating system's TCP timeout otherwise, minutes); a connect_timeout in the URL or
#: PGCONNECT_TIMEOUT in the environment wins.
CONNECT_TIMEOUT_S = 10
_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")
#: What to do when the embedded server a command needs is not running (embedded_server_down).
START_EMBEDDED = "the embedded server is not running: start it with `prodvec db start`"
NO_PGVECTOR = (
    "the database has no pgvector extension yet: run `prodvec migrate` (needs pgvector >= 0.8 installed on the server)"
)


def database_url(settings: Settings | None = None, *, dbname: str = EMBEDDED_DATABASE) -> str:
    """DATABASE_URL (checked: ConfigError when it is no PostgreSQL URL) when set; otherwise
    start or attach to the embedded server.

    ``dbname`` applies to the embedded server only: it is created on first use.
    """
    settings = settings or load_settings()
    if settings.database_url:
        return checked_url(settings.database_url)
    from prodvec.db.embedded import ensure_server  # only needed without DATABASE_URL

    server_url = ensure_server(settings.pgdata)
    ensure_database(server_url, dbname)
    return with_dbname(server_url, dbname)


def checked_url(url: str) -> str:
    """``url`` when it is a PostgreSQL URL psycopg can read; ConfigError saying what to write instead."""
    fix = "write it as postgresql://USER:PASSWORD@HOST:5432/DBNAME, or unset it to use the embedded server"
    shown = _PASSWORD.sub(r"\1:***@", url)  # the message must not print a password
    scheme, separator, rest = url.partition("://")
    dialect, plus, driver = scheme.partition("+")
    if separator and plus and dialect.lower() in POSTGRES_SCHEMES:  # a SQLAlchemy URL
        if driver.lower() != "psycopg":
            # Another driver's URL may hold its own query options, which libpq reads otherwise or refuses.
            raise ConfigError(
                f"DATABASE_URL {shown!r} names the SQLAlchemy driver {driver!r}: drop the '+{driver}' "
                f"driver suffix, prodvec uses psycopg 3 ({dialect}://…)"
            )
        scheme, url = dialect, f"{dialect}://{rest}"  # psycopg 3 itself, which reads the plain URL
    if not separator or scheme.lower() not in POSTGRES_SCHEMES:
        raise ConfigError(f"DATABASE_URL {shown!r} is not a PostgreSQL URL: {fix}")
    try:
        urlsplit(url).port  # noqa: B018  (reading it checks it: ValueError when not a number in range)
        conninfo_to_dict(url)
    except (ValueError, psycopg.ProgrammingError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"DATABASE_URL {shown!r} is malformed ({reason}): {fix}") from None
    return url


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def ensure_database(server_url: str, dbname: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))


def sqlalchemy_url(url: str) -> str:
    """The same database, spelled for SQLAlchemy's psycopg 3 dialect."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+psycopg"
    return f"{scheme}://{rest}"


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg connection that speaks pgvector's types. Needs the schema (`prodvec migrate`)."""
    url = url or database_url()
    if "connect_timeout" not in conninfo_to_dict(url) and not os.environ.get("PGCONNECT_TIMEOUT"):
        url = make_conninfo(url, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        conn = psycopg.connect(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(unavailable(exc, url)) from exc
    register_pgvector(conn)
    return conn


def unavailable(exc: psycopg.OperationalError, url: str | None = None) -> str:
    """One line for a database that did not answer (on connecting, or later in a command) and
    what to check; ``url`` None: the database in effect. libpq's message runs over several
    lines (a hint on the second): one line here."""
    settings = load_settings()
    return (f"cannot connect to the database: {' '.join(str(exc).split())}; "
            f"{_unavailable_advice(url or settings.database_url, settings)}")


def _unavailable_advice(url: str | None, settings: Settings) -> str:
    """What to check when ``url`` (None: the embedded server's, DATABASE_URL being unset) does
    not answer (libpq's message says what failed)."""
    if url and not names_embedded_server(url, settings.pgdata):
        return "check DATABASE_URL and that the server runs (unset DATABASE_URL to use the embedded one)"
    if embedded_server_down(url, settings):
        return START_EMBEDDED
    if url is None:  # it answers again, or it was restarted meanwhile
        return "the embedded server runs: try again"
    return "the embedded server runs: check the database DATABASE_URL names"


def register_pgvector(conn: psycopg.Connection) -> None:
    """pgvector's adapters on ``conn``; before `prodvec migrate` the database has no vector type,
    and SchemaMismatch says to migrate (the connection closed). prodvec's SQLAlchemy engines call
    it on connect, so sessions say it in one line too instead of pgvector's bare ProgrammingError."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError as exc:
        conn.close()
        raise SchemaMismatch(NO_PGVECTOR) from exc


def configure_index_builds(conn: psycopg.Connection, maintenance_work_mem: str) -> None:
    """Session settings for HNSW builds, far faster with the graph in memory and with parallel
    workers (prodvec/worker/bulk.py, the binary-code index)."""
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
    workers = max(1, (os.cpu_count() or 2) - 1)
    conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))


def names_embedded_server(url: str, pgdata: Path) -> bool:
    """Whether ``url`` reaches the embedded server of ``pgdata`` (its socket is in the data
    directory): the URL `prodvec demo` prints, or `prodvec serve` hands its workers."""
    try:
        host = str(conninfo_to_dict(url).get("host") or "")
    except psycopg.ProgrammingError:  # not a URL at all: checked_url says so where it is used
        return False
    return host.startswith("/") and Path(host).resolve().is_relative_to(pgdata.resolve())


def embedded_server_down(url: str | None, settings: Settings) -> bool:
    """Whether ``url`` (None: the database in effect, DATABASE_URL's or else the embedded server)
    is the embedded server's and that server is not running. Then the fix is to start it: the
    URL `prodvec demo` prints is right, and unsetting it would switch to another database."""
    url = url or settings.database_url
    if url and not names_embedded_server(url, settings.pgdata):
        return False
    from prodvec.db.embedded import server_status  # only needed for the embedded server

    return not server_status(settings.pgdata).running
