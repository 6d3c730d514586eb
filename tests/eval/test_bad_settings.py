"""`evaluate()` (the Python API behind `speckit eval`) refuses a setting no run could use before
it resolves the target or starts an engine, and leaves nothing at OUT."""

import pytest

from speculators_kit.core.errors import SpecKitError
from speculators_kit.eval.run import evaluate


@pytest.mark.parametrize("setting, message", [
    ({"k": 0}, "k (--k) must be at least 1, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens (--max-new-tokens) must be at least 1"),
    ({"num_prompts": 0}, "num_prompts (--num-prompts) must be at least 1"),
    ({"concurrency": 0}, "concurrency (--concurrency) must be at least 1"),
    ({"temperature": -0.1}, "temperature (--temperature) must be at least 0"),
    ({"engine": "trt"}, "engine 'trt' is not one of vllm, hf"),
    ({"dtype": "float16"}, "dtype 'float16' is not one of float32, bfloat16"),
    ({"dtype": "bfloat16", "engine": "hf"}, "--dtype bfloat16 needs --engine vllm (the reference loop runs in float32)"),
])
def test_a_setting_no_run_could_use_is_refused_first(tmp_path, setting, message):
    out = tmp_path / "eval"
    with pytest.raises(SpecKitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate("no-such-target", None, "gsm8k", out, **setting)
    assert not out.exists()


def test_asking_for_more_prompts_than_the_set_holds_says_so(tmp_path, tiny_llama):
    """The run goes on with all of them (the HF engine, no draft: only the target-only pass)."""
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"prompt": "yo"}\n')
    lines = []
    summary = evaluate(str(tiny_llama), None, str(tmp_path / "p.jsonl"), tmp_path / "eval", num_prompts=5,
                       max_new_tokens=2, engine="hf", log=lines.append)
    assert summary["num_prompts"] == 2
    assert any("--num-prompts 5, but" in line and "holds 2: using all 2" in line for line in lines), lines
