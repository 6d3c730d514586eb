import pytest


@pytest.fixture(scope="session")
def smollm2_baseline(smollm2, tmp_path_factory):
    """vLLM target-only greedy outputs of SmolLM2 for 50 GSM8K test prompts (24 tokens, 8 in flight),
    as `speckit eval` caches them: reused by every draft compared against it."""
    from speculators_kit.eval.run import evaluate

    out = tmp_path_factory.mktemp("eval-base")
    evaluate(str(smollm2), None, "gsm8k", out, 50, k=3, max_new_tokens=24, concurrency=8, log=print)
    return out / "runs" / "target_only.json"
