"""results.json arithmetic: tau, tokens per step with empty drafts, speedup, identity."""

from speculators_kit.eval.report import markdown, summarize


def _run(outputs, drafts, draft_tokens, accepted, per_pos, seconds, tokens, proposer_stats=None):
    run = {"outputs": outputs, "per_category": {"math": {
        "num_drafts": drafts, "num_draft_tokens": draft_tokens, "num_accepted_tokens": accepted,
        "per_pos": per_pos, "seconds": seconds, "tokens": tokens, "num_prompts": len(outputs)}}}
    if proposer_stats:
        run["proposer_stats"] = proposer_stats
    return run


def _summary(results):
    return summarize(results, items=[0, 1], k=3, engine="vllm", prompts="gsm8k", temperature=0.0,
                     proposer=None, draft="d", target="t")


def test_tau_speedup_and_identity():
    base = _run([[[1, 2]], [[3]]], 0, 0, 0, [], seconds=10.0, tokens=100)
    spec = _run([[[1, 2]], [[3]]], drafts=40, draft_tokens=120, accepted=60, per_pos=[30, 20, 10],
                seconds=8.0, tokens=100)
    s = _summary({"target_only": base, "speculative": spec})
    assert s["tau"] == 1 + 60 / 40
    assert s["tokens_per_step"] == s["tau"]  # no empty drafts without our proposer
    assert s["acceptance_per_position"] == [0.75, 0.5, 0.25]
    assert s["speedup"] == (100 / 8.0) / (100 / 10.0)
    assert s["greedy_identical"] is True
    spec["outputs"] = [[[1, 2]], [[4]]]
    assert _summary({"target_only": base, "speculative": spec})["greedy_identical"] is False


def test_empty_drafts_count_as_steps():
    base = _run([[[1]]], 0, 0, 0, [], seconds=10.0, tokens=100)
    stats = {"drafts": 70, "drafts_cut_short": 50, "drafts_empty": 30, "tokens_proposed": 60,
             "tokens_saved_early_exit": 290, "tokens_saved_budget": 0, "draft_passes_skipped": 100}
    spec = _run([[[1]]], drafts=40, draft_tokens=60, accepted=40, per_pos=[30, 10], seconds=9.0, tokens=100,
                proposer_stats=stats)
    s = _summary({"target_only": base, "speculative": spec})
    assert s["tau"] == 2.0  # vLLM's count: only the 40 steps that had a draft
    assert s["tokens_per_step"] == 1 + 40 / 70
    assert "30 to nothing" in markdown(s)
