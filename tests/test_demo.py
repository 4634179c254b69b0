"""README line 2: `prodvec demo` runs with no arguments, no network and no DATABASE_URL."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PRODVEC_MODEL")}
    env["PRODVEC_HOME"] = str(tmp_path / "home")
    env["HF_HUB_OFFLINE"] = "1"  # the default CLIP weights are unreachable here: exercise the fallback
    # The console script beside this interpreter: what `pip install -e '.[dev]'` put on PATH.
    prodvec = shutil.which("prodvec", path=str(Path(sys.executable).parent))
    assert prodvec, "the prodvec console script is installed by `pip install -e '.[dev]'`"
    try:
        demo = subprocess.run([prodvec, "demo"], env=env, capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stderr
        out = demo.stdout
        assert "imported 300 products" in out
        assert re.search(r"embedded: embedded 300, failed 0", out)
        assert "falling back to the offline encoder timm:efficientnet_lite0" in out
        assert out.count("== ") >= 3 and "INCOMPLETE" not in out
        sneakers = out.split("== ")[1]
        rows = [line for line in sneakers.splitlines()[3:] if line.strip()]
        assert len(rows) == 5 and all(" sneaker " in row for row in rows)
    finally:
        subprocess.run([prodvec, "db", "stop"], env=env, capture_output=True, timeout=60)
