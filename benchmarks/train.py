"""Training throughput on SmolLM2 stores: 1 vs 2 processes, ZeRO 0 vs 2 (1-layer EAGLE-3, bf16).

    python benchmarks/train.py [--store runs/smollm2/store] [--steps 12] [--repeats 2]
Without a store, makes one (150 GSM8K questions with their reference answers, vLLM capture).
Each configuration runs --repeats times, interleaved; the table gives the median over all
steps (first step of each run excluded: warm-up) of training tokens/s, summed over processes.
Writes benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import ROOT, speckit, write

CONFIG = ROOT / "configs" / "train" / "smollm2-eagle3-1layer.yaml"
RUNS = [(1, 0), (1, 2), (2, 0), (2, 2)]


def make_store(path: Path) -> None:
    speckit("datagen", str(ROOT / "configs" / "datagen" / "smollm2-gsm8k.yaml"), "--set", "data.limit=150",
            "--set", "regenerate.enabled=false", "--set", "data.response_field=answer",
            "--set", f"data.path={ROOT.parent / 'shared' / 'data' / 'gsm8k' / 'train.jsonl'}",
            "--set", f"output.dir={path}")


def run(store: Path, out: Path, nproc: int, stage: int, steps: int, tokens: int) -> list[float]:
    speckit("train", str(CONFIG), "--nproc", str(nproc), "--set", f"data.stores=[{store}]",
            "--set", f"output.dir={out}", "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
            "--set", f"train.eval_every={steps}", "--set", f"train.save_every={steps}",
            "--set", f"deepspeed.zero_stage={stage}", "--set", f"train.micro_batch_tokens={tokens}",
            "--set", "logging.tensorboard=false", threads=max(1, 2 // nproc))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in rows if "loss" in r and r["step"] > 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=ROOT / "runs" / "smollm2" / "store")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--micro-batch-tokens", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if not (store / "manifest.json").is_file():
            store = tmp / "store"
            make_store(store)
        rates = {key: [] for key in RUNS}
        for r in range(args.repeats):
            for nproc, stage in RUNS:
                rates[(nproc, stage)] += run(store, tmp / f"{nproc}-{stage}-{r}", nproc, stage,
                                             args.steps, args.micro_batch_tokens)
    base = statistics.median(rates[RUNS[0]])
    rows = [{"processes": n, "zero_stage": s, "tokens_per_s": statistics.median(rates[(n, s)]),
             "vs_1proc_zero0": statistics.median(rates[(n, s)]) / base, "steps_measured": len(rates[(n, s)])}
            for n, s in RUNS]
    meta = {"target": "smollm2-135m-instruct", "draft": "eagle3 1 layer, vocab 8192", "precision": "bf16",
            "micro_batch_tokens": args.micro_batch_tokens, "machine": "2 CPU cores, no GPU"}
    write("train", rows, ["processes", "zero_stage", "tokens_per_s", "vs_1proc_zero0", "steps_measured"], meta)


if __name__ == "__main__":
    main()
