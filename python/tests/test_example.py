"""The notebook-style example runs end to end on the embedded demo data (no network)."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "streamed: K = 117 (same exemplars as the file build)" in r.stdout
    assert r.stdout.rstrip().endswith("done")
