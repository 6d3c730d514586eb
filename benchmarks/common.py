"""Shared bits of the benchmark scripts: run the CLI in a clean process, write JSON + markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def speckit(*args: str, threads: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "speculators_kit.cli", *args], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"speckit {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def write(name: str, rows: list[dict], columns: list[str], meta: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    table = "\n".join(lines)
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{json.dumps(meta)}\n\n{table}\n")
    print(table)
    return RESULTS / f"{name}.md"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):  # '#' keeps trailing zeros: a ratio of 1.00 is not shown as 1
        return f"{value:#.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
