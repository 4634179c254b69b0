"""The command line end to end on a real database, through its JSON outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prodvec.cli.main import main


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str):
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def catalog(photo_dir: Path, tmp_path: Path) -> Path:
    lines = ["sku,title,category,price,stock,image"]
    for index, photo in enumerate(sorted(photo_dir.iterdir())):
        category = "stripes" if "stripes" in photo.name else "solid"
        lines.append(f"C{index},{photo.stem},{category},{10 * (index + 1)}.00,{index % 3},{photo}")
    lines.append("BAD,,solid,-5,1,x.jpg")
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_worker_status_search(capsys, db_url: str, catalog: Path, photo_dir: Path) -> None:
    report = _run_json(capsys, "import", str(catalog))
    assert (report["inserted"], report["updated"], report["unchanged"]) == (8, 0, 0)
    assert [row["line"] for row in report["bad_rows"]] == [10]

    assert _run_json(capsys, "status") | {"oldest_pending_seconds": None} == {
        "total": 8, "embedded": 0, "pending": 8, "failed": 0, "oldest_pending_seconds": None,
    }
    assert main(["worker", "--once"]) == 0
    assert "embedded 8, failed 0" in capsys.readouterr().err
    status = _run_json(capsys, "status")
    assert (status["embedded"], status["pending"], status["failed"]) == (8, 0, 0)

    query = photo_dir / "red.jpg"
    hits = _run_json(capsys, "search", "--image", str(query), "-k", "3")
    assert len(hits) == 3
    assert hits[0]["title"] == "red" and hits[0]["distance"] < 1e-2  # the same photo is nearest
    assert set(hits[0]) >= {"sku", "title", "category", "price", "stock", "distance"}
    distances = [hit["distance"] for hit in hits]
    assert distances == sorted(distances)

    filtered = _run_json(capsys, "search", "--image", str(query), "--category", "stripes", "--max-price", "60", "--in-stock")
    assert filtered and all(
        hit["category"] == "stripes" and hit["price"] <= 60 and hit["stock"] > 0 for hit in filtered
    )
    more_like = _run_json(capsys, "search", "--sku", hits[0]["sku"], "-k", "10")
    assert hits[0]["sku"] not in {hit["sku"] for hit in more_like} and len(more_like) == 7

    assert _run_json(capsys, "import", str(catalog))["unchanged"] == 8
    assert _run_json(capsys, "status")["pending"] == 0  # re-import queues nothing


def test_failures_and_retry(capsys, db_url: str, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "c.csv").write_text(f"sku,title,category,price,stock,image\nX1,x,c,1,1,{tmp_path / 'broken.jpg'}\n")
    assert main(["import", str(tmp_path / "c.csv")]) == 0
    assert main(["worker", "--once"]) == 0
    failures = _run_json(capsys, "failures")
    assert failures[0]["sku"] == "X1" and "not an image" in failures[0]["reason"]
    assert main(["retry", "--all"]) == 0
    assert "requeued 1" in capsys.readouterr().out
    assert _run_json(capsys, "status")["pending"] == 1
    assert main(["requeue"]) == 0  # every product with an image, whatever its state
    assert "queued 1 product(s)" in capsys.readouterr().out


def test_errors_are_one_line_not_tracebacks(capsys, db_url: str) -> None:
    assert main(["search", "--sku", "NOPE"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prodvec: error:") and "Traceback" not in err


def test_db_commands_on_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"PRODVEC_HOME": str(tmp_path / "home")}

    def prodvec(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prodvec.cli.main", *argv], env=env, capture_output=True, text=True, timeout=120)

    try:
        url = prodvec("db", "start").stdout.strip()
        assert url.startswith("postgresql://") and str(tmp_path / "home") in url
        status = json.loads(prodvec("db", "status", "--json").stdout)
        assert status["running"] is True and status["embedded"] is True
        assert prodvec("db", "url").stdout.strip() == url
        migrate = prodvec("migrate")
        assert migrate.returncode == 0 and "512-d" in migrate.stdout
    finally:
        assert prodvec("db", "stop").stdout.strip() == "stopped"
    assert json.loads(prodvec("db", "status", "--json").stdout)["running"] is False
