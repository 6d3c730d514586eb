"""`speckit eval --engine hf` end to end on a tiny random target: the reference speculative loop
reproduces target-only greedy output, and every run says when it was timed and beside what."""

import json

from speculators_kit.eval.run import evaluate
from tests.helpers import make_draft


def test_hf_engine_eval_is_lossless_and_records_timing(tiny_llama, tmp_path):
    make_draft(tiny_llama, tmp_path / "draft", "eagle3", 1, init="target-last-layer")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"turns": t}) for t in (["abc ab", "again"], ["ba ba ba"])) + "\n")
    s = evaluate(str(tiny_llama), str(tmp_path / "draft"), str(prompts), tmp_path / "eval", k=3,
                 max_new_tokens=12, engine="hf", log=lambda *_: None)
    assert s["greedy_identical"] is True and s["num_prompts"] == 2
    assert s["num_drafts"] > 0 and s["by_turn"]["2"]["num_prompts"] == 1
    for name in ("target_only", "speculative"):
        assert s["timing"][name]["other_cpu_cores"] >= 0.0
    assert isinstance(s["timing_clean"], bool)
    assert "Timed: target only 20" in (tmp_path / "eval" / "report.md").read_text()
