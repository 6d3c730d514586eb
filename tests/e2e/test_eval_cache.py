"""A run `speckit eval` cached with one engine is never reported as the other engine's: the same
OUT, prompts and settings with --engine vllm after --engine hf measure again in vLLM."""

import json

import pytest

from speculators_kit.eval.run import evaluate

pytestmark = pytest.mark.slow


def test_switching_engine_in_the_same_out_measures_again(tiny_llama, tmp_path):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "eval"
    prompts.write_text(json.dumps({"turns": ["abc ab"]}) + "\n")
    settings = {"max_new_tokens": 6, "log": print}
    hf = evaluate(str(tiny_llama), None, str(prompts), out, engine="hf", **settings)
    assert "vllm" not in hf["versions"]
    served = evaluate(str(tiny_llama), None, str(prompts), out, engine="vllm", **settings)
    assert served["engine"] == "vllm" and "vllm" in served["versions"] and "ld_preload" in served["versions"]
    assert json.loads((out / "runs" / "target_only.json").read_text())["spec"]["engine"] == "vllm"
