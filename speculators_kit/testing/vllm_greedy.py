"""Run prompts through offline vLLM (target-only, or with a draft) and write the outputs and
spec-decode counters as JSON. A script (run in its own process) because vLLM spawns workers
and needs the `__main__` guard; tests call it with subprocess.

    python -m speculators_kit.testing.vllm_greedy --target DIR [--draft DIR --k 3] \
        --prompts prompts.json --max-tokens 32 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default asks for most of RAM and fails
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # let vLLM use both cores
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}


def run(args) -> dict:
    from vllm import LLM, SamplingParams

    spec = None
    if args.draft:
        spec = {"method": args.method, "model": args.draft, "num_speculative_tokens": args.k}
    llm = LLM(model=args.target, dtype=args.dtype, max_model_len=args.max_model_len,
              enforce_eager=True, speculative_config=spec, disable_log_stats=False, seed=0)
    prompts = json.loads(Path(args.prompts).read_text())
    messages = [[{"role": "user", "content": p}] for p in prompts]
    outs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    counters = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            counters[metric.name.split(":")[1]] = getattr(metric, "values", None) or metric.value
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "texts": [o.outputs[0].text for o in outs], "spec_decode": counters}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft")
    parser.add_argument("--method", default="eagle3")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--prompts", required=True, help="JSON list of user messages")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = run(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    main()
