"""`prodvec serve`'s arguments and address, checked before anything slow: no database is reached
and no model loaded (DATABASE_URL points at nothing, and the error is still the address's)."""
from __future__ import annotations

import socket

import pytest

from prodvec.cli.main import main

NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=1"


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    for name in ("PRODVEC_API_KEYS", "PRODVEC_ADMIN_KEYS", "PRODVEC_ALLOW_OPEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_refused(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", port])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("prodvec serve: error: argument --port: ") and "from 1 to 65535" in error, error


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_a_queue_limit_below_one_names_the_flag(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--queue-limit", limit])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == f"prodvec serve: error: argument --queue-limit: {limit!r}: give a whole number of at least 1"


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"prodvec: error: port {port} on 127.0.0.1 is in use: stop what uses it or pass --port\n")


def test_an_address_not_of_this_machine_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "192.0.2.1", "--port", "8765", "--allow-open"]) == 2  # TEST-NET-1
    assert capsys.readouterr().err == (
        "prodvec: error: cannot listen on 192.0.2.1: it is not an address of this machine: pass --host "
        "127.0.0.1, 0.0.0.0 or one of its addresses\n")
