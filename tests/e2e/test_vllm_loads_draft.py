"""A draft saved in our format loads in stock vLLM (CPU) as `method: eagle3` against the real
SmolLM2 target, and vLLM's greedy output with it equals vLLM's target-only output."""

import json
import subprocess
import sys

import pytest

from tests.helpers import make_draft

pytestmark = pytest.mark.slow
PROMPTS = ["What is 7 times 8?", "Write one sentence about the moon.",
           "List three colors.", "Natalia sold 48 clips in April and half as many in May. How many in total?"]


def vllm_run(tmp_path, name, target, draft=None):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "speculators_kit.testing.vllm_greedy", "--target", str(target),
           "--prompts", str(prompts), "--max-tokens", "32", "--out", str(out)]
    if draft:
        cmd += ["--draft", str(draft), "--k", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_vllm_eagle3_greedy_equals_target_only(smollm2, tmp_path):
    make_draft(smollm2, tmp_path / "draft", "eagle3", 1, init="target-last-layer")
    baseline = vllm_run(tmp_path, "baseline", smollm2)
    spec = vllm_run(tmp_path, "spec", smollm2, tmp_path / "draft")
    assert spec["spec_decode"]["spec_decode_num_drafts"] > 0  # the draft really ran
    assert spec["token_ids"] == baseline["token_ids"]
    assert all(len(ids) > 0 for ids in baseline["token_ids"])
