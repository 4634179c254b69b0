"""`prodvec serve -q` / `-v`: uvicorn's own logs follow the CLI's, as prodvec's do. A real server
process on a free loopback port, against a fresh migrated database, asked over HTTP; its output read
after it stopped."""
from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from conftest import serve_process

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 240  # the model loads first: slow while other work shares the 2 cores


def serve_and_ask(options: list[str], folder: Path, **environ: str) -> str:
    """What `prodvec serve OPTIONS` wrote (stderr, and stdout where uvicorn logs requests) while it
    answered /healthz and /v1/categories and stopped; ``environ``: more of its environment."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PRODVEC_API_KEYS", "PRODVEC_ADMIN_KEYS", "PRODVEC_ALLOW_OPEN", "PRODVEC_LOG_LEVEL",
                           "PRODVEC_READ_URLS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(environ)
    log_path = folder / f"serve{''.join(options)}.log"
    with serve_process(options, cwd=folder, env=env, log_path=log_path, start_seconds=START_SECONDS,
                       log_stdout=True) as base:
        assert httpx.get(f"{base}/healthz", timeout=60).status_code == 200
        assert httpx.get(f"{base}/v1/categories", timeout=60).status_code == 200
    return log_path.read_text()


@pytest.mark.timeout(600)
def test_quiet_serve_logs_no_request_and_verbose_logs_each(db_url: str, tmp_path: Path) -> None:
    verbose = serve_and_ask(["-v"], tmp_path)
    assert '"GET /v1/categories HTTP/1.1" 200' in verbose, verbose  # the access line the quiet run must not have
    quiet = serve_and_ask(["-q"], tmp_path)
    assert "GET /" not in quiet and "INFO" not in quiet, quiet  # uvicorn's and prodvec's: warnings and up only
    assert quiet.startswith("prodvec serve: http://127.0.0.1:"), quiet  # the address, printed, stays


def log_line(level: str, logger: str, message: str) -> str:
    """A pattern for one log line in prodvec's format (prodvec.logs): time, level, logger, message."""
    return rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {level} {re.escape(logger)}: {message}$"


@pytest.mark.timeout(600)
def test_each_worker_process_logs_as_prodvec_serve_was_told(db_url: str, tmp_path: Path) -> None:
    """`--workers 2`: uvicorn's worker processes are fresh interpreters that never ran the command
    line's setup; prodvec's lines come out in its format, at the level -q (or neither) set."""
    told = serve_and_ask(["--workers", "2"], tmp_path)
    assert re.search(log_line("INFO", "prodvec.service", r"serving \S+ on \S+"), told, re.MULTILINE), told
    # -q: no INFO, and a warning (a replica that cannot be reached, on a port nothing listens on)
    # still in prodvec's format, not its bare message.
    quiet = serve_and_ask(["-q", "--workers", "2"], tmp_path, PRODVEC_READ_URLS="postgresql://prodvec@127.0.0.1:1/x")
    assert "INFO" not in quiet and "serving" not in quiet, quiet
    assert re.search(log_line("WARNING", "prodvec.replicas", r"replica 127\.0\.0\.1:1/x skipped: .*"), quiet,
                     re.MULTILINE), quiet
