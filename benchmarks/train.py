"""Training throughput on SmolLM2 stores (1-layer EAGLE-3, bf16).

    python benchmarks/train.py [--store runs/smollm2/store] [--steps 12] [--repeats 2] [--compare packing]
--compare processes (default): 1 vs 2 processes, ZeRO 0 vs 2 -> results/train.{json,md}.
--compare packing: padded vs packed micro-batches (1 process, ZeRO 2) -> results/train_packing.*.
--compare optimizer: AdamW vs Muon (optim.kind; 1 process, ZeRO 2, packed) -> results/train_optimizer.*.
Without a store, makes one (150 GSM8K questions with their reference answers, vLLM capture).
Each configuration runs --repeats times, interleaved; the table gives the median over all
steps (first step of each run excluded: warm-up) of real (non-padding) training tokens/s,
summed over processes, and of seconds per optimizer step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import ROOT, speckit, write

from speculators_kit.core.store import StoreReader

CONFIG = ROOT / "configs" / "train" / "smollm2-eagle3-1layer.yaml"
RUNS = {"processes": [(1, 0, False, "adamw"), (1, 2, False, "adamw"), (2, 0, False, "adamw"), (2, 2, False, "adamw")],
        "packing": [(1, 2, False, "adamw"), (1, 2, True, "adamw")],
        "optimizer": [(1, 2, True, "adamw"), (1, 2, True, "muon")]}


def make_store(path: Path) -> None:
    speckit("datagen", str(ROOT / "configs" / "datagen" / "smollm2-gsm8k.yaml"), "--set", "data.limit=150",
            "--set", "regenerate.enabled=false", "--set", "data.response_field=answer",
            "--set", f"data.path={ROOT.parent / 'shared' / 'data' / 'gsm8k' / 'train.jsonl'}",
            "--set", f"output.dir={path}")


def run(store: Path, out: Path, key: tuple, steps: int, tokens: int) -> list[dict]:
    nproc, stage, packing, optimizer = key
    speckit("train", str(CONFIG), "--nproc", str(nproc), "--set", f"data.stores=[{store}]",
            "--set", f"data.packing={str(packing).lower()}", "--set", f"optim.kind={optimizer}",
            "--set", f"output.dir={out}", "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
            "--set", f"train.eval_every={steps}", "--set", f"train.save_every={steps}",
            "--set", f"deepspeed.zero_stage={stage}", "--set", f"train.micro_batch_tokens={tokens}",
            "--set", "logging.tensorboard=false", threads=max(1, 2 // nproc))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r and r["step"] > 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=ROOT / "runs" / "smollm2" / "store")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--micro-batch-tokens", type=int, default=2048)
    parser.add_argument("--compare", choices=sorted(RUNS), default="processes")
    args = parser.parse_args()
    runs = RUNS[args.compare]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if not (store / "manifest.json").is_file():
            store = tmp / "store"
            make_store(store)
        logged = {key: [] for key in runs}
        for r in range(args.repeats):
            for key in runs:
                logged[key] += run(store, tmp / f"{'-'.join(map(str, key))}-{r}", key, args.steps,
                                   args.micro_batch_tokens)
    rate = {key: statistics.median(row["tokens_per_s"] for row in logged[key]) for key in runs}
    rows = [{"processes": key[0], "zero_stage": key[1], "packing": key[2], "optimizer": key[3],
             "tokens_per_s": rate[key], "step_s": statistics.median(row["step_s"] for row in logged[key]),
             "vs_first": rate[key] / rate[runs[0]], "steps_measured": len(logged[key])}
            for key in runs]
    meta = {"target": "smollm2-135m-instruct", "draft": "eagle3 1 layer, vocab 8192", "precision": "bf16",
            "micro_batch_tokens": args.micro_batch_tokens, "store": str(store), "store_samples": len(StoreReader(store)), "machine": "2 CPU cores, no GPU"}
    name = "train" if args.compare == "processes" else f"train_{args.compare}"
    write(name, rows, ["processes", "zero_stage", "packing", "optimizer", "tokens_per_s", "step_s", "vs_first",
                       "steps_measured"], meta)


if __name__ == "__main__":
    main()
