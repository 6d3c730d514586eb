"""What one speculative step costs, in target steps, and what early exit buys (vLLM CPU, batch 1).

    python benchmarks/proposer.py --draft runs/quickstart/train/draft [--prompt-set gsm8k|mt-bench]
        [--prompts 8] [--tokens 128] [--repeats 2] [--thresholds 0.3 0.6] [--no-stock] [--results proposer]

Runs, side by side on the same prompts (GSM8K test by default), greedy: target-only; vLLM's own
EAGLE proposer (SPECKIT_PLUGIN_PROPOSER=0) at k=5 (left out with --no-stock); ours at fixed k=5
(argmax over the draft's own vocabulary; the draft's own proposer defaults turned off); ours at k=5
with early exit at each threshold. Per run:
- step / target: wall time of one engine step (draft + verify) over one target-only decode step;
- draft / target: time inside the proposer per step (ours only: it times itself);
- tokens / step: tokens per verification step, counting steps whose draft early exit cut to
  nothing (vLLM's tau counts only steps that had a draft);
- verify / target: the rest of the step (target forward over 1+k tokens, sampling, scheduling).
Each repeat re-runs target-only and every configuration in turn (interleaved: drift on this
noisy machine hits all alike); the table gives medians over repeats of each repeat's ratios.
Writes benchmarks/results/RESULTS.{json,md} (--results, default `proposer`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path

from common import write

from speculators_kit.eval.cpu_share import all_clean
from speculators_kit.eval.run import evaluate
from speculators_kit.target.embedded import resolve_target

# "ours" drafts k tokens every step, whatever defaults the draft's config.json carries
# (a `--budget full` draft ships with early exit on).
FIXED_K = {"early_exit_threshold": 0, "token_budget": None, "request_budget": None}


def runs(args) -> list[tuple]:
    """(name, k, our proposer?, proposer settings) for every speculative run."""
    out = [("vLLM proposer", args.k, False, None)] if args.stock else []
    out.append(("ours", args.k, True, FIXED_K))
    return out + [(f"ours, early exit {t:g}", args.k, True, {"early_exit_threshold": t})
                  for t in args.thresholds]


def run_one(target, draft, out: Path, base: Path, k, ours, proposer, args) -> dict:
    (out / "runs").mkdir(parents=True)
    shutil.copy(base / "runs" / "target_only.json", out / "runs" / "target_only.json")
    os.environ["SPECKIT_PLUGIN_PROPOSER"] = "1" if ours else "0"
    try:
        s = evaluate(target, draft, args.prompt_set, out, args.prompts, k=k, max_new_tokens=args.tokens,
                     log=print, proposer=proposer)
    finally:
        os.environ.pop("SPECKIT_PLUGIN_PROPOSER")
    target_step = 1.0 / s["tokens_per_s_target_only"]
    stats = s.get("proposer_stats")
    steps = stats["steps"] if stats else s["num_drafts"]  # stock: every decode step drafts k
    seconds = _generated(out) / s["tokens_per_s_speculative"]
    step = seconds / steps / target_step
    row = {"k": k, "tau": s["tau"], "tokens / step": s["tokens_per_step"], "draft tokens": s["num_draft_tokens"],
           "tok/s": s["tokens_per_s_speculative"],
           "speedup": s["speedup"], "identical": s["greedy_identical"], "step / target": step,
           "clean timing": s["timing_clean"]}
    if stats:
        draft_cost = stats["propose_s"] / stats["steps"] / target_step
        row.update({"draft / target": draft_cost, "verify / target": step - draft_cost,
                    "draft passes / step": stats["draft_passes"] / stats["steps"]})
    return row


def _generated(out: Path) -> int:
    result = json.loads((out / "runs" / "speculative.json").read_text())["result"]
    return sum(c["tokens"] for c in result["per_category"].values())


def median_rows(repeats: list[list[dict]]) -> list[dict]:
    rows = []
    for runs in zip(*repeats):
        row = dict(runs[0])
        for key, value in runs[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = statistics.median(r[key] for r in runs)
        row["identical"] = all(r.get("identical") for r in runs) if "identical" in row else None
        if "clean timing" in row:  # one contended repeat already skews the median
            row["clean timing"] = all_clean(r["clean timing"] for r in runs)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft", required=True, help="a trained EAGLE-3 draft for SmolLM2 (speckit quickstart)")
    ap.add_argument("--prompt-set", default="gsm8k", help="gsm8k | mt-bench | humaneval | PATH.jsonl")
    ap.add_argument("--prompts", type=int, default=8, help="how many prompts of the set")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.3, 0.6], help="early-exit thresholds")
    ap.add_argument("--no-stock", dest="stock", action="store_false", help="leave out vLLM's own proposer")
    ap.add_argument("--results", default="proposer", help="name of the results files")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    target = str(resolve_target("smollm2-135m-instruct"))
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            base = Path(tmp) / f"base{r}"
            summary = evaluate(target, None, args.prompt_set, base, args.prompts, max_new_tokens=args.tokens,
                               log=print)
            rows = [{"run": "target only", "tok/s": summary["tokens_per_s_target_only"], "step / target": 1.0}]
            for i, (name, k, ours, proposer) in enumerate(runs(args)):
                rows.append({"run": name, **run_one(target, args.draft, Path(tmp) / f"run{r}-{i}", base, k, ours,
                                                    proposer, args)})
            repeats.append(rows)
    rows = median_rows(repeats)
    meta = {"repeats": args.repeats, "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "prompts": f"{args.prompt_set} x{args.prompts}",
            "max_new_tokens": args.tokens, "batch": 1, "draft": args.draft, "date": summary["date"],
            "versions": summary["versions"]}
    columns = ["run", "k", "tau", "tokens / step", "draft tokens", "tok/s", "speedup", "identical",
               "step / target", "draft / target", "verify / target", "draft passes / step", "clean timing"]
    write(args.results, rows, columns, meta)


if __name__ == "__main__":
    main()
