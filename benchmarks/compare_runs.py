"""Training runs side by side: held-out τ and eval loss at each of their evaluation steps (the
trainer's metrics.jsonl), median training speed (--speed), and `speckit eval` results of their
checkpoints. Runs with `optim.ema` also give the raw weights' held-out τ and loss.

    python benchmarks/compare_runs.py --name optimizer_lr_muon \\
        --run adamw=/tmp/exp/train_ttt3 --run muon=/tmp/exp/train_muon \\
        --eval adamw@1000=/tmp/exp/eval_adamw_1000 --eval muon@1000=/tmp/exp/eval_muon_1000 \\
        --note "what the runs share, the machine"

Writes benchmarks/results/NAME.{json,md} (one row per run and evaluation step).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import write

COLUMNS = ["run", "step", "held-out τ", "eval loss", "MT-bench τ", "acceptance per position", "identical",
           "train tok/s", "s/step"]
RAW = ["raw held-out τ", "raw eval loss"]  # optim.ema runs: the weights the optimizer stepped


def run_rows(name: str, train_dir: Path, evals: dict[int, Path], speed: bool) -> list[dict]:
    metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m and m["step"] > 20]  # past start-up and warm caches
    rows = [{"run": name, "step": m["step"], "held-out τ": round(m["tau"], 3), "eval loss": round(m["eval_loss"], 3)}
            | ({RAW[0]: round(m["tau_raw"], 3), RAW[1]: round(m["eval_loss_raw"], 3)} if "tau_raw" in m else {})
            for m in metrics if "eval_loss" in m and m["step"] > 0]
    for row in rows:
        if row["step"] in evals:
            result = json.loads((evals[row["step"]] / "results.json").read_text())
            row.update({"MT-bench τ": round(result["tau"], 3), "identical": result["greedy_identical"],
                        "acceptance per position": " ".join(f"{a:.2f}" for a in result["acceptance_per_position"])})
    if speed and steps and rows:
        rows[-1]["train tok/s"] = round(statistics.median(m["tokens_per_s"] for m in steps))
        rows[-1]["s/step"] = round(statistics.median(m["step_s"] for m in steps), 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--run", action="append", required=True, help="NAME=TRAIN_OUTPUT_DIR")
    ap.add_argument("--eval", action="append", default=[], help="NAME@STEP=EVAL_OUT_DIR")
    ap.add_argument("--note", default="")
    ap.add_argument("--speed", action="store_true", help="add median training speed (only for runs that had the CPU alone)")
    a = ap.parse_args()
    evals: dict[str, dict[int, Path]] = {}
    for spec in a.eval:
        key, path = spec.split("=", 1)
        name, step = key.split("@")
        evals.setdefault(name, {})[int(step)] = Path(path)
    rows = []
    for spec in a.run:
        name, path = spec.split("=", 1)
        rows += run_rows(name, Path(path), evals.get(name, {}), a.speed)
    columns = (COLUMNS if a.speed else COLUMNS[:-2]) + (RAW if any(RAW[0] in r for r in rows) else [])
    write(a.name, rows, columns, {"note": a.note, "runs": a.run, "evals": a.eval})


if __name__ == "__main__":
    main()
