"""Which allocator and OpenMP runtime vLLM's CPU engine runs with, and what each is worth.

    python benchmarks/cpu_runtime.py --draft runs/qs-full/train/draft --train-config runs/qs-full/configs/train.yaml
        [--prompt-set mt-bench] [--prompts 8] [--tokens 256] [--train-steps 40] [--repeats 2] [--results cpu_runtime]

Runs `speckit eval` (target-only, then target + draft at fixed k=5, greedy) and a short
`speckit train` of the given config (one process) under three runtimes, interleaved in each
repeat so that drift on this noisy machine hits all alike:
- vLLM's default: glibc malloc and PyTorch's GNU OpenMP (`SPECKIT_CPU_PRELOAD=0`);
- tcmalloc, GNU OpenMP;
- tcmalloc and Intel OpenMP: what speckit preloads by default (speculators_kit/cpu_runtime.py).
The table gives medians over repeats: tokens/s, the speedup over target-only under the same
runtime, each run's tokens/s over the default's in the same repeat, whether every output
equals the default runtime's target-only output, the training's median seconds per step
(steps 20 on) and whether its losses equal the default's.
Writes benchmarks/results/RESULTS.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from common import ROOT, write

from speculators_kit.cpu_runtime import cpu_name, find_tcmalloc

FIXED_K = '{"early_exit_threshold": 0, "token_budget": null, "request_budget": null}'


def runtimes() -> dict[str, dict]:
    """Each runtime's environment changes."""
    tcmalloc = find_tcmalloc()
    if tcmalloc is None:
        sys.exit("no tcmalloc on this machine: apt-get install libtcmalloc-minimal4 (install.sh does)")
    return {"vLLM default (glibc malloc, GNU OpenMP)": {"SPECKIT_CPU_PRELOAD": "0", "LD_PRELOAD": ""},
            "tcmalloc, GNU OpenMP": {"SPECKIT_CPU_PRELOAD": "0", "LD_PRELOAD": tcmalloc},
            "tcmalloc, Intel OpenMP (speckit's default)": {"SPECKIT_CPU_PRELOAD": "1", "LD_PRELOAD": ""}}


def _speckit(args: list[str], changes: dict) -> None:
    """`speckit ARGS` in a fresh process whose environment has only this runtime's preloading
    (and all of the machine's cores: no leftover OMP_NUM_THREADS)."""
    drop = ("LD_PRELOAD", "SPECKIT_CPU_PRELOAD", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({k: v for k, v in changes.items() if v}, HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "-m", "speculators_kit.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"speckit {args[0]} failed under {changes}:\n{proc.stderr[-3000:]}")


def eval_under(changes: dict, out: Path, a) -> tuple[dict, dict]:
    """One `speckit eval` in a clean process: its results and its outputs per run."""
    _speckit(["eval", "--target", a.target, "--draft", a.draft, "--prompts", a.prompt_set,
              "--num-prompts", str(a.prompts), "--k", str(a.k), "--max-new-tokens", str(a.tokens),
              "--proposer", FIXED_K, "--out", str(out)], changes)
    outputs = {run: json.loads((out / "runs" / f"{run}.json").read_text())["result"]["outputs"]
               for run in ("target_only", "speculative")}
    return json.loads((out / "results.json").read_text()), outputs


def train_under(changes: dict, out: Path, a) -> tuple[float, list[float]]:
    """A short training in a clean process: median s/step from step 20 on, and its losses."""
    sets = {"output.dir": out, "train.max_steps": a.train_steps, "train.eval_every": 10**6,
            "train.save_every": 10**6, "logging.tensorboard": "false"}
    args = ["train", a.train_config]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    _speckit(args, changes)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step_s"' in line]
    return statistics.median(r["step_s"] for r in rows if r["step"] >= 20), [r["loss"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft", required=True)
    ap.add_argument("--train-config", required=True, help="a speckit train YAML (the quickstart writes one)")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--prompt-set", default="mt-bench")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", default="cpu_runtime")
    a = ap.parse_args()
    envs = runtimes()
    samples: dict[str, list[dict]] = {name: [] for name in envs}
    with tempfile.TemporaryDirectory(prefix="speckit-cpu-runtime-") as tmp:
        for repeat in range(a.repeats):
            reference = None  # the default runtime's run of this repeat
            for i, (name, changes) in enumerate(envs.items()):
                print(f"repeat {repeat + 1}/{a.repeats}: {name}", flush=True)
                res, outputs = eval_under(changes, Path(tmp) / f"{repeat}-{i}", a)
                step_s, losses = train_under(changes, Path(tmp) / f"{repeat}-{i}-train", a)
                reference = reference or {**res, "step_s": step_s, "outputs": outputs["target_only"],
                                          "losses": losses}
                samples[name].append({
                    "target_only": res["tokens_per_s_target_only"], "speculative": res["tokens_per_s_speculative"],
                    "speedup": res["speedup"], "tau": res["tau"],
                    "target_only_vs_default": res["tokens_per_s_target_only"] / reference["tokens_per_s_target_only"],
                    "speculative_vs_default": res["tokens_per_s_speculative"] / reference["tokens_per_s_speculative"],
                    "same_tokens": all(o == reference["outputs"] for o in outputs.values()),
                    "train_s_per_step": step_s, "train_step_vs_default": step_s / reference["step_s"],
                    "same_losses": losses == reference["losses"]})
    flags = ("same_tokens", "same_losses")
    rows = [{"runtime": name, **{key: statistics.median(s[key] for s in runs) for key in runs[0] if key not in flags},
             **{flag: all(s[flag] for s in runs) for flag in flags}, "repeats": runs} for name, runs in samples.items()]
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "cpu": cpu_name(),
            "draft": a.draft, "prompts": f"{a.prompt_set} x{a.prompts}", "max_new_tokens": a.tokens, "k": a.k,
            "train_config": a.train_config,
            "train_steps": a.train_steps, "repeats": a.repeats, "date": date.today().isoformat()}
    write(a.results, rows, ["runtime", "target_only", "speculative", "speedup", "tau", "target_only_vs_default",
                            "speculative_vs_default", "same_tokens", "train_s_per_step", "train_step_vs_default",
                            "same_losses"], meta)


if __name__ == "__main__":
    main()
