"""The plugin's proposer in vLLM (CPU) against SmolLM2 with the trained draft, 50 GSM8K prompts,
8 in flight: early exit and token budgets draft fewer tokens, never change a greedy output, and
the budget is never exceeded in any engine step."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import eval_against_baseline

pytestmark = pytest.mark.slow


@pytest.fixture()
def fixed_k(smollm2_trained_eval):
    return smollm2_trained_eval[1]


def test_early_exit_from_the_drafts_config_drafts_less_at_identical_outputs(
        smollm2, smollm2_trained, smollm2_baseline, fixed_k, tmp_path):
    draft = tmp_path / "draft"
    shutil.copytree(smollm2_trained / "draft", draft)
    config = json.loads((draft / "config.json").read_text())
    config["speculators_kit"]["proposer"] = {"early_exit_threshold": 0.3}
    (draft / "config.json").write_text(json.dumps(config))
    early = eval_against_baseline(smollm2, draft, tmp_path / "eval", smollm2_baseline)
    assert early["greedy_identical"] is True and fixed_k["greedy_identical"] is True
    ratio = early["num_draft_tokens"] / fixed_k["num_draft_tokens"]
    print(f"early exit 0.3: {early['num_draft_tokens']} vs {fixed_k['num_draft_tokens']} draft tokens "
          f"({ratio:.2f}x), tau {early['tau']:.2f} vs {fixed_k['tau']:.2f}, "
          f"tokens per step {early['tokens_per_step']:.2f} vs {fixed_k['tokens_per_step']:.2f}")
    assert ratio < 0.9
    stats = early["proposer_stats"]
    assert stats["drafts_cut_short"] > 0 and stats["tokens_saved_early_exit"] > 0
    assert stats["draft_passes_skipped"] > 0  # the loop itself stopped early, not only the proposal
    assert early["num_draft_tokens"] <= stats["tokens_proposed"]
    # Steps whose draft was cut to nothing still count as steps (vLLM's tau leaves them out).
    assert stats["drafts_empty"] > 0 and 1 <= early["tokens_per_step"] < early["tau"]
    assert early["proposer"] == {"early_exit_threshold": 0.3, "log_interval_s": 30.0}


def test_token_budget_is_never_exceeded_and_changes_no_output(smollm2, smollm2_trained, smollm2_baseline,
                                                              fixed_k, tmp_path):
    budget = 4  # < 8 requests x k=3: binds in every full step
    capped = eval_against_baseline(smollm2, smollm2_trained / "draft", tmp_path / "eval", smollm2_baseline,
                                   proposer={"token_budget": budget, "request_budget": 2})
    assert capped["greedy_identical"] is True
    stats = capped["proposer_stats"]
    assert 0 < stats["max_tokens_in_step"] <= budget
    assert stats["tokens_saved_budget"] > 0 and stats["tokens_saved_early_exit"] == 0
    assert stats["max_passes_in_step"] <= 2  # request budget 2: a third pass is never run
    assert capped["num_draft_tokens"] < fixed_k["num_draft_tokens"]


BAD = """
import sys
from vllm import LLM
if __name__ == "__main__":
    LLM(model=sys.argv[1], enforce_eager=True, max_model_len=256, additional_config={"speculators_kit": {"early_exit": 0.3}},
        speculative_config={"method": "eagle3", "model": sys.argv[2], "num_speculative_tokens": 3})
"""


def test_a_misspelt_setting_fails_before_the_engine_starts(smollm2, smollm2_trained, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BAD)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(script), str(smollm2), str(smollm2_trained / "draft")],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode != 0
    assert "speculators_kit: bad proposer settings in --additional-config: early_exit" in proc.stderr
    assert "early_exit_threshold" in proc.stderr  # the message lists the known settings
    assert "EngineCore" not in proc.stderr
