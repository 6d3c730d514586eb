"""The code stays clean under the pinned ruff (pyproject's dev extra): its default rules change
between releases, so a finding here is new code, not a new ruff."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_finds_nothing():
    version = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True,
                             check=False)
    assert version.returncode == 0, f"ruff is missing: pip install -e '.[dev]' ({version.stderr.strip()})"
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           str(ROOT)], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, f"{version.stdout.strip()} found:\n{proc.stdout[-4000:]}{proc.stderr[-1000:]}"
