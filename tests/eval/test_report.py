"""results.json arithmetic: tau, tokens per target forward, per-turn numbers, speedup, identity."""

from speculators_kit.eval.report import identity_message, markdown, summarize


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
    assert s["tokens_per_step"] == s["tau"]  # 100 tokens = 40 forwards + 60 accepted: all had a draft
    assert s["acceptance_per_position"] == [0.75, 0.5, 0.25]
    assert s["speedup"] == (100 / 8.0) / (100 / 10.0)
    assert s["greedy_identical"] is True
    spec["outputs"] = [[[1, 2]], [[4]]]
    s = _summary({"target_only": base, "speculative": spec})
    assert s["greedy_identical"] is False and s["outputs_differing"] == 1
    assert identity_message(s) == (False, ("error: speculative outputs differ from target-only outputs at "
                                           "temperature 0 (1 of 2 prompts)"))
    expected, note = identity_message(s | {"dtype": "bfloat16"})  # rounding, not a bug
    assert expected and note.startswith("note: ") and "--dtype float32 gives identical outputs" in note


def test_forwards_without_a_draft_count_as_steps():
    base = _run([[[1]]], 0, 0, 0, [], seconds=10.0, tokens=100)
    stats = {"drafts": 70, "drafts_cut_short": 50, "drafts_empty": 30, "tokens_proposed": 60,
             "tokens_saved_early_exit": 290, "tokens_saved_budget": 0, "draft_passes_skipped": 100}
    spec = _run([[[1]]], drafts=40, draft_tokens=60, accepted=40, per_pos=[30, 10], seconds=9.0, tokens=100,
                proposer_stats=stats)
    s = _summary({"target_only": base, "speculative": spec})
    assert s["tau"] == 2.0  # vLLM's count: only the 40 steps that had a draft
    assert s["tokens_per_step"] == 100 / (100 - 40)  # 60 forwards, 20 of them without a draft
    assert "30 to nothing" in markdown(s)


def _turns(*turns):
    return [{"num_drafts": d, "num_draft_tokens": 3 * d, "num_accepted_tokens": a, "per_pos": pos,
             "tokens": n, "num_prompts": 1} for d, a, pos, n in turns]


def test_turns_are_summed_over_categories_and_ngram_gets_tokens_per_step():
    base = _run([[[1], [2]], [[3], [4]]], 0, 0, 0, [], seconds=10.0, tokens=100)
    spec = _run([[[1], [2]], [[3], [4]]], drafts=40, draft_tokens=120, accepted=30, per_pos=[20, 8, 2],
                seconds=8.0, tokens=100)
    spec["per_category"]["writing"] = dict(spec["per_category"]["math"])
    spec["per_category"]["math"]["per_turn"] = _turns((10, 5, [4, 1, 0], 30), (10, 10, [6, 3, 1], 30))
    spec["per_category"]["writing"]["per_turn"] = _turns((10, 5, [4, 1, 0], 20), (10, 10, [6, 3, 1], 20))
    ngram = _run([[[1], [2]], [[3], [4]]], drafts=10, draft_tokens=30, accepted=25, per_pos=[10, 9, 6],
                 seconds=7.0, tokens=100)
    s = _summary({"target_only": base, "speculative": spec, "ngram": ngram})
    assert s["by_turn"]["1"]["tau"] == 1 + 10 / 20 and s["by_turn"]["2"]["tau"] == 1 + 20 / 20
    assert s["by_turn"]["2"]["tokens_per_step"] == 50 / (50 - 20)
    assert s["by_turn"]["1"]["acceptance_per_position"] == [8 / 20, 2 / 20, 0.0]
    assert s["by_turn"]["1"]["num_prompts"] == 2
    # ngram drafts on few steps: a high tau, a low yield per forward
    assert s["ngram_tau"] == 3.5 and s["ngram_tokens_per_step"] == 100 / 75
    assert s["ngram_by_turn"] == {}  # a run saved before per-turn counters existed
    md = markdown(s)
    assert "| 2 | draft | 2 | 2.00 | 1.67 |" in md and "| ngram | 3.50 | 1.33 |" in md


def test_a_run_timed_beside_other_work_is_flagged():
    base = _run([[[1]]], 0, 0, 0, [], seconds=10.0, tokens=100)
    spec = _run([[[1]]], drafts=40, draft_tokens=120, accepted=60, per_pos=[30, 20, 10], seconds=4.0, tokens=100)
    base["timing"] = {"started": "2026-12-02 14:03 UTC", "other_cpu_cores": 1.4, "cpu_count": 2}
    spec["timing"] = {"started": "2026-12-03 05:40 UTC", "other_cpu_cores": 0.02, "cpu_count": 2}
    s = _summary({"target_only": base, "speculative": spec})
    assert s["timing_clean"] is False
    md = markdown(s)
    assert "target only 2026-12-02 14:03 UTC (other processes: 1.40 cores)" in md
    assert "kept 1.40 of 2 cores busy while the target only run was timed" in md
    assert "runs/target_only.json" in md and "draft run was timed" not in md
    base["timing"]["other_cpu_cores"] = 0.1
    assert _summary({"target_only": base, "speculative": spec})["timing_clean"] is True
    del base["timing"]  # cached by a version that did not record it
    s = _summary({"target_only": base, "speculative": spec})
    assert s["timing_clean"] is None and "target only (when and beside what: not recorded)" in markdown(s)
