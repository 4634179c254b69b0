"""`prodvec serve -q` / `-v`: uvicorn's own logs follow the CLI's, as prodvec's do. A real server
process on a free loopback port, against a fresh migrated database, asked over HTTP; its output read
after it stopped."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from conftest import serve_process

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 240  # the model loads first: slow while other work shares the 2 cores


def serve_and_ask(flag: str, folder: Path) -> str:
    """What `prodvec serve FLAG` wrote (stderr, and stdout where uvicorn logs requests) while it
    answered /healthz and /v1/categories and stopped."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PRODVEC_API_KEYS", "PRODVEC_ADMIN_KEYS", "PRODVEC_ALLOW_OPEN")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log_path = folder / f"serve{flag}.log"
    with serve_process([flag], cwd=folder, env=env, log_path=log_path, start_seconds=START_SECONDS,
                       log_stdout=True) as base:
        assert httpx.get(f"{base}/healthz", timeout=60).status_code == 200
        assert httpx.get(f"{base}/v1/categories", timeout=60).status_code == 200
    return log_path.read_text()


@pytest.mark.timeout(600)
def test_quiet_serve_logs_no_request_and_verbose_logs_each(db_url: str, tmp_path: Path) -> None:
    verbose = serve_and_ask("-v", tmp_path)
    assert '"GET /v1/categories HTTP/1.1" 200' in verbose, verbose  # the access line the quiet run must not have
    quiet = serve_and_ask("-q", tmp_path)
    assert "GET /" not in quiet and "INFO" not in quiet, quiet  # uvicorn's and prodvec's: warnings and up only
    assert quiet.startswith("prodvec serve: http://127.0.0.1:"), quiet  # the address, printed, stays
