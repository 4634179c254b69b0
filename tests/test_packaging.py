"""prodvec installs like any package: a wheel, installed outside the source tree, migrates a
fresh database, imports a catalog and embeds it.

The wheel goes into a throwaway venv that sees the already installed dependencies (torch and
the rest are far too large to install per test run) through a .pth line naming this
interpreter's site-packages. Lines of a .pth file only extend sys.path: the editable install of
prodvec that site-packages holds (an import hook started by its own .pth file) is not started,
so the venv imports the wheel's copy — checked, not assumed.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = "open_clip:ViT-B-32:none"
#: Left out of the copy the wheel is built from: build output and caches of the checkout.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".prodvec",
              "wheels", "results")


def source_packages() -> set[str]:
    """Every package under prodvec/ (a folder holding Python files), as a dotted name."""
    return {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in [ROOT / "prodvec", *(ROOT / "prodvec").rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }


def test_pyproject_lists_every_package() -> None:
    """A package missing from pyproject's explicit list would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    missing = source_packages() - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    # The shipped schema folders are mapped into the package; anything else listed must exist.
    mapped = set(setuptools.get("package-dir", {}))
    assert mapped == {"prodvec.migrations", "prodvec.alembic"}
    assert listed - source_packages() == mapped


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from a clean copy of the source tree."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools is already here (no index needed) and the build reads only
    # pyproject.toml.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out),
         str(source)],
        check=True, cwd=out,
    )
    (built,) = out.glob("prodvec-*.whl")
    return built


def test_wheel_ships_schema_sql_and_demo(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        *(f"prodvec/migrations/{p.name}" for p in (ROOT / "migrations").glob("*.sql")),
        *(f"prodvec/alembic/versions/{p.name}" for p in (ROOT / "alembic/versions").glob("*.py")),
        "prodvec/alembic/env.py", "prodvec/alembic/script.py.mako", "prodvec/py.typed",
        # Every file under prodvec/: modules, SQL, the demo's catalog and photos (`prodvec demo`
        # runs from the wheel), static web files. Package data left out of pyproject shows here.
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "prodvec").rglob("*")
          if p.is_file() and "__pycache__" not in p.parts),
    }
    assert expected - names == set()
    assert len([n for n in names if n.startswith("prodvec/demo/catalog/images/")]) == 300


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel installed and this interpreter's dependencies visible."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheel)],
        check=True,
    )
    return root


@pytest.fixture
def outside(venv: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder outside the source tree and an environment that runs the venv's prodvec there.

    The embedded server's data lives outside pytest's tmp dirs, which are 0700 (see conftest).
    """
    folder = Path(tempfile.mkdtemp(prefix="prodvec-wheel-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        PRODVEC_HOME=str(folder / "home"),
        PRODVEC_MODEL=TEST_MODEL,
        PRODVEC_DEVICE="cpu",
    )
    yield folder, env
    subprocess.run(["prodvec", "db", "stop"], cwd=folder, env=env, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def alembic_head() -> str:
    """The newest revision of the source tree's alembic/versions (computed by alembic itself)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ROOT / "alembic")).get_current_head()


def test_installed_wheel_migrates_imports_and_embeds(venv: Path, outside: tuple[Path, dict[str, str]]) -> None:
    folder, env = outside

    def prodvec(*args: str) -> str:
        done = subprocess.run(["prodvec", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"prodvec {' '.join(args)}: {done.stderr}"
        return done.stdout

    imported = subprocess.run(
        ["python", "-c", "import prodvec, prodvec.demo; from prodvec import session, Product, Sku, Text; "
                         "print(prodvec.__file__, prodvec.__version__, prodvec.demo.__file__)"],
        cwd=folder, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert Path(imported[0]).is_relative_to(venv), f"the venv imports prodvec from {imported[0]}, not the wheel"
    assert not Path(imported[0]).is_relative_to(ROOT)
    # A catalog of three demo photos, read from the installed wheel.
    demo = Path(imported[2]).parent / "catalog"
    with (demo / "catalog.csv").open() as source:
        rows = list(csv.DictReader(source))[:3]
    for row in rows:
        row["image"] = str(demo / row["image"])
    with (folder / "catalog.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    prodvec("migrate")
    prodvec("import", "catalog.csv")
    prodvec("worker", "--once")
    status = json.loads(prodvec("status", "--json"))
    assert (status["total"], status["embedded"]) == (3, 3), status

    url = prodvec("db", "url").strip()
    import psycopg

    with psycopg.connect(url) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        skus = [sku for (sku,) in conn.execute("SELECT sku FROM products WHERE embedding IS NOT NULL ORDER BY sku")]
    assert version == alembic_head()
    assert skus == sorted(row["sku"] for row in rows)
