"""Every benchmark script imports: they are not run by the suite (they take minutes to hours),
and a renamed function they use would otherwise be found only by the next person who runs them.
benchmarks/serve_load.py also runs end to end (tests/test_serve_load.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_every_benchmark_imports() -> None:
    assert len(BENCHMARKS) >= 10
    # One process imports them all (each imports torch or the database code once): as scripts
    # do, with benchmarks/ first on sys.path; no module's main() runs.
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", code, *(path.stem for path in BENCHMARKS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
