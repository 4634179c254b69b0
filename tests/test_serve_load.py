"""benchmarks/serve_load.py --quick runs end to end, so the serving benchmark cannot rot.

Speed is the benchmark's business, not this test's: it checks that every phase ran and printed
its figures, and that the script's own correctness checks held (exit 0: every request answered
or refused with 503 + Retry-After, 503s in the overload phase, the server alive, memory flat).
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Table rows the quick run prints, each with q/s, p50 and p99 figures.
ROWS = (
    "sku, in-process similar_to (1 thread)",
    "sku, HTTP, 1 client",
    "sku, HTTP, 4 clients",
    "image, HTTP, 8 clients",
    "image, HTTP, 1 client",
)


@pytest.mark.timeout(600)  # ~40 s alone; far longer while other work shares the 2 cores
def test_quick_run_measures_every_phase() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # The script and the server it starts import this checkout's prodvec.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    for label in ROWS:
        line = next((line for line in run.stdout.splitlines() if line.startswith(label)), None)
        assert line is not None, f"no row {label!r} in:\n{run.stdout}"
        rate, p50, p99 = (float(figure) for figure in line[len(label):].split())
        assert rate > 0 and 0 < p50 <= p99 and math.isfinite(p99), line
    bare = re.search(r"^image, bare encoder .*?(\d+\.\d+)", run.stdout, re.MULTILINE)
    assert bare and float(bare.group(1)) > 0, run.stdout
    statuses = re.search(r"overload wave 1: \d+ requests .*statuses (\{.*?\})", run.stdout)
    assert statuses and '"503"' in statuses.group(1), run.stdout
    assert re.search(r"server RSS: \d+ MB -> \d+ MB", run.stdout), run.stdout
