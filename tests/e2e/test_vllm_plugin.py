"""Our drafts in vLLM (CPU) against SmolLM2: greedy output identical to target-only for 50
GSM8K prompts with every kind of draft (random, trained from a target-initialised head, MoE
through the plugin), and the plugin reaching vLLM's spawned processes."""

import json

import pytest

from speculators_kit.cpu_runtime import find_tcmalloc
from tests.e2e.conftest import N, eval_against_baseline
from tests.helpers import make_draft, short_tmpdir

pytestmark = pytest.mark.slow


def test_untrained_draft_is_lossless_and_the_results_are_complete(smollm2, tmp_path, smollm2_baseline):
    # a random head: nearly every draft token is rejected (the trained one below covers acceptance)
    make_draft(smollm2, tmp_path / "draft", "eagle3", 1, init="random")
    summary = eval_against_baseline(smollm2, tmp_path / "draft", tmp_path / "eval", smollm2_baseline)
    assert summary["num_prompts"] == N and summary["num_drafts"] > 0
    assert summary["greedy_identical"] is True
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("tau", "acceptance_per_position", "num_drafts", "num_draft_tokens", "num_accepted_tokens",
                "tokens_per_s_target_only", "tokens_per_s_speculative", "speedup", "greedy_identical",
                "num_prompts", "k", "engine", "versions"):
        assert key in results, key
    # when each run was timed and what else computed meanwhile, so a contended run cannot pass unseen
    for name in ("target_only", "speculative"):
        assert results["timing"][name]["other_cpu_cores"] >= 0.0 and results["timing"][name]["cpu_count"] > 0
    assert isinstance(results["timing_clean"], bool)
    assert (tmp_path / "eval" / "acceptance.png").stat().st_size > 1000
    assert "| draft |" in (tmp_path / "eval" / "report.md").read_text()
    assert "Timed: target only 20" in (tmp_path / "eval" / "report.md").read_text()


def test_trained_draft_is_lossless_and_accepted(smollm2_trained_eval):
    out, summary = smollm2_trained_eval
    assert summary["greedy_identical"] is True
    assert summary["tau"] > 1.2  # measured 1.4 on GSM8K test with this 40-step draft
    # the engine's worker ran with what speckit preloads (vLLM warns about each one missing)
    log = (out / "runs" / "speculative.log").read_text()
    assert "Speculative decoding on CPU without Intel OpenMP" not in log
    if find_tcmalloc():
        assert "libtcmalloc is not found in LD_PRELOAD" not in log
    assert "libiomp5.so" in json.loads((out / "results.json").read_text())["versions"]["ld_preload"]


def test_moe_draft_runs_through_the_plugin_in_spawned_processes(smollm2, tmp_path, smollm2_baseline, monkeypatch):
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("SPECKIT_PLUGIN_TRACE", str(trace))
    make_draft(smollm2, tmp_path / "draft", "eagle3-moe", 1, init="target-last-layer")
    summary = eval_against_baseline(smollm2, tmp_path / "draft", tmp_path / "eval", smollm2_baseline)
    assert summary["greedy_identical"] is True and summary["num_drafts"] > 0
    names = {line.split(" ", 1)[1].strip() for line in trace.read_text().splitlines()}
    assert "MainProcess" in names and names - {"MainProcess"}, names  # engine core / workers too


def test_unsupported_vllm_version_is_named():
    from speculators_kit.vllm_plugin import supported

    assert supported("0.32.0") and supported("0.32.5")
    assert not supported("0.33.0") and not supported("0.31.2")


CHECK = """
import sys
from vllm import LLM
if __name__ == "__main__":
    LLM(model=sys.argv[1], enforce_eager=True, max_model_len=256,
        speculative_config={"method": "eagle3", "model": sys.argv[2], "num_speculative_tokens": 3})
"""


@pytest.mark.parametrize("case", ["hidden", "fingerprint"])
def test_a_draft_for_another_target_fails_before_the_engine_starts(tmp_path, smollm2, tiny_targets, case):
    import os
    import subprocess
    import sys

    make_draft(tiny_targets["llama"], tmp_path / "draft", "eagle3", 1, aux_layer_ids=[1, 2])
    target = smollm2 if case == "hidden" else tiny_targets["qwen3"]  # qwen3: same shapes, other model
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(script), str(target), str(tmp_path / "draft")],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode != 0
    assert "speculators_kit: draft" in proc.stderr and "does not fit target" in proc.stderr
    expected = "hidden states of size 64, the target's are 576" if case == "hidden" else "made for another target"
    assert expected in proc.stderr
    assert "EngineCore" not in proc.stderr  # refused before any engine process existed


PLAIN = """
import sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], enforce_eager=True, max_model_len=256)
    print("TOKENS", len(llm.generate(["Hello"], SamplingParams(max_tokens=4), use_tqdm=False)[0].outputs[0].token_ids))
"""


@pytest.mark.parametrize("depth", ["short", "long"])
def test_an_engine_built_without_speckit_leaves_no_socket_in_tmp(tiny_llama, depth):
    """vLLM 0.32 left 7 ZMQ sockets in TMPDIR per engine start; the plugin gives every engine
    started where it is installed (`vllm serve`, a user's own `LLM(...)`) a folder it removes.
    long: a TMPDIR over 70 characters, where vLLM alone fails to bind its sockets, the folder is
    made in /tmp instead."""
    import os
    import subprocess
    import sys

    with short_tmpdir() as root:
        tmpdir = root / ("x" * 80 if depth == "long" else "t")
        tmpdir.mkdir()
        (root / "plain.py").write_text(PLAIN)
        env = {k: v for k, v in os.environ.items() if k != "VLLM_RPC_BASE_PATH"}
        env |= {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmpdir)}
        proc = subprocess.run([sys.executable, str(root / "plain.py"), str(tiny_llama)], capture_output=True,
                              text=True, timeout=600, env=env, check=False)
        assert proc.returncode == 0 and "TOKENS 4" in proc.stdout, proc.stderr[-3000:]
        assert sorted(p.name for p in tmpdir.iterdir()) == []
