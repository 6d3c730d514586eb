import shutil

import pytest

N = 50  # GSM8K test prompts in every vLLM comparison against smollm2_baseline
# one set of settings for the baseline and every draft, so the baseline's cached run matches
SETTINGS = {"k": 3, "max_new_tokens": 24, "concurrency": 8, "log": print}


def eval_against_baseline(smollm2, draft, out, baseline, proposer=None):
    """A draft in vLLM on the baseline's prompts and settings; the cached target-only run is reused."""
    from speculators_kit.eval.run import evaluate

    (out / "runs").mkdir(parents=True)
    shutil.copy(baseline, out / "runs" / "target_only.json")  # same spec: reused, not re-run
    return evaluate(str(smollm2), str(draft), "gsm8k", out, N, proposer=proposer, **SETTINGS)


@pytest.fixture(scope="session")
def smollm2_baseline(smollm2, tmp_path_factory):
    """vLLM target-only greedy outputs of SmolLM2 for 50 GSM8K test prompts (24 tokens, 8 in flight),
    as `speckit eval` caches them: reused by every draft compared against it."""
    from speculators_kit.eval.run import evaluate

    out = tmp_path_factory.mktemp("eval-base")
    evaluate(str(smollm2), None, "gsm8k", out, N, **SETTINGS)
    return out / "runs" / "target_only.json"


@pytest.fixture(scope="session")
def smollm2_trained_eval(smollm2, smollm2_trained, smollm2_baseline, tmp_path_factory):
    """(eval folder, summary) of smollm2_trained's draft at fixed k against the baseline: the plugin
    tests check it, the proposer tests compare their settings with it."""
    out = tmp_path_factory.mktemp("trained-eval")
    return out, eval_against_baseline(smollm2, smollm2_trained / "draft", out, smollm2_baseline)
