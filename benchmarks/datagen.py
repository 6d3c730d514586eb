"""Capture throughput and size: vLLM vs HF backend on SmolLM2, bf16 vs fp8, 200 GSM8K prompts
with their reference answers (no regeneration, so both backends capture the same tokens).

    python benchmarks/datagen.py [--limit 200] [--regenerate]
Writes benchmarks/results/datagen.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ROOT, speckit, write

CONFIG = ROOT / "configs" / "datagen" / "smollm2-gsm8k.yaml"


def run(tmp: Path, name: str, limit: int, *sets: str) -> dict:
    out = tmp / name
    args = ["datagen", str(CONFIG), "--json", "--set", f"data.limit={limit}", "--set", f"output.dir={out}",
            "--set", f"data.path={ROOT.parent / 'shared' / 'data' / 'gsm8k' / 'train.jsonl'}"]
    for s in sets:
        args += ["--set", s]
    lines = speckit(*args).stdout.splitlines()  # vLLM logs to stdout too: take our JSON line
    stats = json.loads(next(x for x in reversed(lines) if x.startswith('{"samples"')))
    return {"run": name, "samples": stats["samples"], "tokens": stats["tokens"],
            "tokens_per_s": stats["tokens_per_s"], "startup_s": stats["startup_s"],
            "bytes_per_token": stats["bytes_per_token"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--regenerate", action="store_true", help="also time vLLM with answers re-written")
    args = parser.parse_args()
    no_regen = ("regenerate.enabled=false", "data.response_field=answer")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(run(tmp, "vllm-bf16", args.limit, *no_regen))
        rows.append(run(tmp, "hf-bf16", args.limit, *no_regen, "capture.backend=hf"))
        rows.append(run(tmp, "vllm-fp8", args.limit, *no_regen, "capture.dtype=fp8"))
        if args.regenerate:
            rows.append(run(tmp, "vllm-bf16-regenerate128", args.limit, "regenerate.max_new_tokens=128"))
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speed_vs_vllm"] = row["tokens_per_s"] / base
    meta = {"target": "smollm2-135m-instruct", "prompts": f"GSM8K train, first {args.limit}",
            "layers": "auto (2, 15, 27) + 30", "machine": "2 CPU cores, no GPU",
            "note": "tokens_per_s excludes engine start (startup_s)"}
    write("datagen", rows, ["run", "samples", "tokens", "tokens_per_s", "speed_vs_vllm", "startup_s",
                            "bytes_per_token"], meta)


if __name__ == "__main__":
    main()
