"""`speckit eval --engine hf` end to end on a tiny random target: the reference speculative loop
reproduces target-only greedy output, every run says when it was timed and beside what, and a
cached run is reused until the draft at the same path changes."""

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
    assert (tmp_path / "eval" / "acceptance.png").read_bytes()[:4] == b"\x89PNG"
    # target only in the same folder: no plot of the earlier draft is left beside its results
    evaluate(str(tiny_llama), None, str(prompts), tmp_path / "eval", k=3, max_new_tokens=12, engine="hf",
             log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["report.md", "results.json", "runs"]


def test_a_cached_run_is_reused_until_the_draft_at_its_path_changes(tiny_llama, tmp_path):
    draft, runs = tmp_path / "draft", tmp_path / "eval" / "runs"
    make_draft(tiny_llama, draft, "eagle3", 1, init="target-last-layer")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"turns": ["abc ab"]}) + "\n")

    def run():
        s = evaluate(str(tiny_llama), str(draft), str(prompts), tmp_path / "eval", k=3, max_new_tokens=12,
                     engine="hf", log=lambda *_: None)
        # a cached run's file is not touched; a re-run rewrites it with its new spec (text, not
        # mtime, shows that: a tiny run can finish within one timestamp tick)
        return s, {name: ((runs / f"{name}.json").stat().st_mtime_ns, (runs / f"{name}.json").read_text())
                   for name in ("target_only", "speculative")}

    _, first = run()
    assert run()[1] == first  # same settings, same draft: both runs come from the cache
    # new serving defaults in config.json: another draft for the speculative run, same target run
    config = json.loads((draft / "config.json").read_text())
    config["speculators_kit"]["proposer"] = {"early_exit_threshold": 0.3}
    (draft / "config.json").write_text(json.dumps(config))
    s, second = run()
    assert second["target_only"] == first["target_only"]
    assert second["speculative"][1] != first["speculative"][1]
    assert s["proposer"] is None  # the reference loop does not exit early: not reported as if it had
    make_draft(tiny_llama, draft, "eagle3", 1, init="random", seed=1)  # retrained at the same path
    assert run()[1]["speculative"][1] != second["speculative"][1]


def test_a_cached_run_from_another_release_or_unreadable_is_measured_again(tiny_llama, tmp_path):
    prompts, out, said = tmp_path / "prompts.jsonl", tmp_path / "eval", []
    prompts.write_text(json.dumps({"turns": ["abc ab"]}) + "\n")
    cache = out / "runs" / "target_only.json"

    def run():
        said.clear()
        return evaluate(str(tiny_llama), None, str(prompts), out, max_new_tokens=6, engine="hf", log=said.append)

    s = run()
    assert s["engine"] == "hf" and {"speculators-kit", "torch", "transformers"} <= s["versions"].keys()
    run()
    assert any("reusing" in line for line in said)
    old = json.loads(cache.read_text())
    old["spec"]["engine_versions"]["transformers"] = "4.0.0"  # measured before an upgrade
    cache.write_text(json.dumps(old))
    run()
    assert any("other settings (engine_versions)" in line for line in said), said
    assert json.loads(cache.read_text())["spec"]["engine_versions"] == s["versions"]
    cache.write_text('{"spec": ')  # cut short by hand or by a full disk
    assert run()["num_prompts"] == 1 and any("not a cached run" in line for line in said), said


def test_a_system_message_is_part_of_the_measured_chat(tiny_llama, tmp_path):
    def outputs(record, name):
        prompts = tmp_path / f"{name}.jsonl"
        prompts.write_text(json.dumps(record) + "\n")
        evaluate(str(tiny_llama), None, str(prompts), tmp_path / name, max_new_tokens=8, engine="hf",
                 log=lambda *_: None)
        return json.loads((tmp_path / name / "runs" / "target_only.json").read_text())["result"]["outputs"]

    plain = outputs({"prompt": "abc ab"}, "plain")
    system = [{"role": "system", "content": "zz yy xx"}, {"role": "user", "content": "abc ab"}]
    assert outputs({"messages": system}, "system") != plain  # it was dropped: the same chat as plain
