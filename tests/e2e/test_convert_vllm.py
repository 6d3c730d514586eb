"""`speckit convert --validate` end to end: the converted SafeAILab EAGLE-3 and EAGLE-1 (fc with
bias, through our plugin) drafts load in vLLM against the tiny target and keep its greedy
output."""

import subprocess
import sys

import pytest

from speculators_kit.core.format import read_config
from tests.convert.sources import eagle1_source, eagle3_source

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("make, method", [(eagle3_source, "eagle3"), (eagle1_source, "eagle")])
def test_convert_validate_runs_the_draft_in_vllm(tmp_path, tiny_llama, make, method):
    make(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "speculators_kit.cli", "convert", str(tmp_path / "src"),
                           str(tmp_path / "out"), "--target", str(tiny_llama), "--validate"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vLLM loads it; greedy output identical to target-only" in proc.stderr
    assert read_config(tmp_path / "out").arch == method
