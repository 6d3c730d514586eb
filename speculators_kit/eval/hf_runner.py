"""The `--engine hf` counterpart of vllm_runner: HF `generate` for target-only, the reference
speculative loop for target + draft; same result layout. Slow, but needs no vLLM."""

from __future__ import annotations

import time

import torch

from speculators_kit.eval import cpu_share
from speculators_kit.eval.prompts import opening


def run(spec: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speculators_kit.api import SpeculativeModel

    tok = AutoTokenizer.from_pretrained(spec["target"])
    draft = spec.get("draft")
    if draft:
        model = SpeculativeModel.from_pretrained(spec["target"], draft)
        hf = model.target.model
    else:
        model, hf = None, AutoModelForCausalLM.from_pretrained(spec["target"], dtype=torch.float32).eval()
    outputs = [[] for _ in spec["prompts"]]
    per_category: dict[str, dict] = {}
    started, cpu_before = time.time(), cpu_share.snapshot()
    for i, prompt in enumerate(spec["prompts"]):
        cat = per_category.setdefault(prompt["category"], {
            "num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "per_pos": [],
            "seconds": 0.0, "tokens": 0, "num_prompts": 0, "per_turn": []})
        cat["num_prompts"] += 1
        conv = opening(prompt)
        for t, turn in enumerate(prompt["turns"]):
            if t == len(cat["per_turn"]):
                cat["per_turn"].append({"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
                                        "per_pos": [], "tokens": 0, "num_prompts": 0})
            per_turn = cat["per_turn"][t]
            conv.append({"role": "user", "content": turn})
            began = time.perf_counter()
            if model is not None:
                res = model.generate(conv, spec["max_new_tokens"], spec["temperature"],
                                     num_speculative_tokens=spec["k"], seed=spec["seed"])
                ids, text, stats = res.token_ids, res.text, res.stats
                _add(cat, stats)
                _add(per_turn, stats)
            else:
                ids = _target_only(hf, tok, conv, spec)
                text = tok.decode(ids, skip_special_tokens=True)
            cat["seconds"] += time.perf_counter() - began
            cat["tokens"] += len(ids)
            per_turn["tokens"] += len(ids)
            per_turn["num_prompts"] += 1
            outputs[i].append(list(ids))
            conv.append({"role": "assistant", "content": text})
    timing = cpu_share.timing(cpu_before, cpu_share.snapshot(), started)
    return {"outputs": outputs, "per_category": per_category, "timing": timing,
            "versions": {**spec.get("engine_versions", {}), "torch": torch.__version__}}


def _add(cat: dict, stats: dict) -> None:
    for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        cat[key] += stats[key]
    pos = stats["accepted_per_position"]
    cat["per_pos"] = [a + b for a, b in zip(pos, cat["per_pos"] + [0] * (len(pos) - len(cat["per_pos"])))]


@torch.inference_mode()
def _target_only(hf, tok, conv, spec) -> list[int]:
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    torch.manual_seed(spec["seed"])
    sample = spec["temperature"] > 0
    kwargs = {"temperature": spec["temperature"], "top_k": 0, "top_p": 1.0} if sample else {}
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec["max_new_tokens"],
                      do_sample=sample, **kwargs)
    return out[0, ids.shape[1]:].tolist()
