"""README line 2: `prodvec demo` runs with no arguments, no network and no DATABASE_URL; the
hits it prints are the nearest products, checked against numpy over the demo's own database."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from test_cli import _fails

from prodvec.db.active_model import ActiveModel, read_active_model
from prodvec.db.connection import ensure_database, with_dbname
from prodvec.db.embedded import ensure_server
from prodvec.demo.run import CATALOG_DIR, DEMO_DATABASE, fresh_database
from prodvec.images.views import fused_distances

TIE = 2e-3  # halfvec storage; the table prints 4 decimals


def _hits(section: str) -> list[tuple[str, float]]:
    """(sku, distance) of each row of one printed table: title, header, rule, rows, a blank line."""
    rows = []
    for line in section.splitlines()[3:]:
        if not line.strip():
            break
        cells = line.split()
        rows.append((cells[0], float(cells[-1])))
    return rows


def _assert_nearest(printed: list[tuple[str, float]], skus: np.ndarray, distances: np.ndarray, k: int) -> None:
    order = np.argsort(distances, kind="stable")[:k]
    assert len(printed) == k
    assert np.allclose([distance for _, distance in printed], distances[order], atol=TIE)
    by_sku = dict(zip(skus.tolist(), distances.tolist(), strict=True))
    for sku, distance in printed:  # each printed hit at its own true distance, up to ties
        assert abs(by_sku[sku] - distance) <= TIE


def test_demo_runs_end_to_end() -> None:
    # Outside pytest's tmp dirs, as in conftest: a pytest run (another one on this machine too)
    # resets /tmp/pytest-of-<user> to 0700, which would lock the demo server's own system user
    # out of its data mid-run (as root).
    home = Path(tempfile.mkdtemp(prefix="prodvec-demo-")) / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PRODVEC_MODEL", "PRODVEC_CATALOG_VIEWS")}
    env["PRODVEC_HOME"] = str(home)
    env["PRODVEC_ROBUST_QUERIES"] = "1"
    env["HF_HUB_OFFLINE"] = "1"  # the default CLIP weights are unreachable here: exercise the fallback
    # The console script beside this interpreter: what `pip install -e '.[dev]'` put on PATH.
    prodvec = shutil.which("prodvec", path=str(Path(sys.executable).parent))
    assert prodvec, "the prodvec console script is installed by `pip install -e '.[dev]'`"
    try:
        demo = subprocess.run([prodvec, "demo"], env=env, capture_output=True, text=True, timeout=600)
        assert demo.returncode == 0, demo.stderr
        out = demo.stdout
        assert "imported 300 products" in out
        assert re.search(r"embedded: embedded 300, failed 0", out)
        assert "falling back to the offline encoder timm:efficientnet_lite0" in out
        assert demo.stderr.count("started the embedded PostgreSQL") == 1
        assert demo.stderr.rstrip().endswith("`prodvec db stop` stops it")  # it keeps running: said last
        sections = out.split("== ")
        assert len(sections) == 4  # three searches (the offline encoder has no text tower)
        how = r" \((exact: every matching product compared|approximate: the nearest the HNSW index found)"
        assert all(re.search(how, section.splitlines()[0]) for section in sections[1:])
        _check_hits(home / "pgdata", sneakers=_hits(sections[1]), like_sku=_hits(sections[3]))
        # Its closing lines point the other commands at its own database.
        [export] = [line for line in out.splitlines() if line.strip().startswith("export DATABASE_URL=")]
        demo_url = shlex.split(export)[1].removeprefix("DATABASE_URL=")
        assert demo_url.split("?")[0].endswith(f"/{DEMO_DATABASE}")
        # Run again, it leaves the catalog where the user may have worked since as it is, and says how to replace it.
        again = subprocess.run([prodvec, "demo"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        assert "`prodvec demo --reset`" in again.stderr and again.stdout == ""
        status = subprocess.run([prodvec, "status", "--json"], env=env | {"DATABASE_URL": demo_url},
                                capture_output=True, text=True, timeout=120)
        assert json.loads(status.stdout)["up_to_date"] == 300, status.stderr
    finally:
        subprocess.run([prodvec, "db", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(home.parent, ignore_errors=True)


def _check_hits(pgdata: Path, *, sneakers: list[tuple[str, float]], like_sku: list[tuple[str, float]]) -> None:
    from prodvec.encode import load_encoder
    from prodvec.encode.robust import encode_queries
    from prodvec.images.decode import decode

    with psycopg.connect(with_dbname(ensure_server(pgdata), DEMO_DATABASE)) as conn:
        register_vector(conn)
        rows = conn.execute("SELECT sku, category, price, stock, embedding FROM products ORDER BY sku").fetchall()
        # The demo records the encoder it took (the fallback) as its catalog's active model.
        assert read_active_model(conn) == ActiveModel("timm:efficientnet_lite0", 1280, "single")
    skus = np.array([row[0] for row in rows])
    category = np.array([row[1] for row in rows])
    price = np.array([float(row[2]) for row in rows])
    stock = np.array([row[3] for row in rows])
    vectors = np.stack([row[4].to_numpy() for row in rows]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    # "more like sku FM-00003, in stock": its stored vector, itself excluded.
    itself = skus == "FM-00003"
    distances = 1 - vectors @ vectors[itself][0]
    keep = (stock > 0) & ~itself
    _assert_nearest(like_sku, skus[keep], distances[keep], 5)

    # "sneakers under 80, in stock": the query photo's robust views through the same encoder.
    encoder = load_encoder("timm:efficientnet_lite0", "cpu")
    photo = decode((CATALOG_DIR / "queries" / "sneaker.png").read_bytes(), target_size=encoder.input_size)
    views = encode_queries(encoder, [photo], robust=True)
    distances = fused_distances(views, vectors)[0]
    keep = (category == "sneaker") & (price < 80) & (stock > 0)
    _assert_nearest(sneakers, skus[keep], distances[keep], 5)


def test_an_earlier_demos_database_is_replaced_only_when_asked(capsys, pgdata: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The README invites working in the demo's database: `prodvec demo` refuses, in one line and
    before anything else, to drop it; --reset (fresh_database's ``reset``) replaces it."""
    monkeypatch.setenv("PRODVEC_HOME", str(pgdata.parent))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    server = ensure_server(pgdata)
    ensure_database(server, DEMO_DATABASE)
    url = with_dbname(server, DEMO_DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (note text)")  # the user's work there
    err = _fails(capsys, "demo")
    assert err == (f"prodvec: error: the database {DEMO_DATABASE} of an earlier demo is there, with what you "
                   "imported or changed in it since: `prodvec demo --reset` drops it and runs the demo again\n")

    def mine() -> tuple[object, ...] | None:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT to_regclass('mine')").fetchone()

    assert mine() == ("mine",)
    assert fresh_database(server, reset=True) == url
    assert capsys.readouterr().out == f"dropping the earlier demo's database {DEMO_DATABASE} (--reset)\n"
    assert mine() == (None,)
