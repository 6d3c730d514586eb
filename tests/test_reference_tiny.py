"""Fast check of the reference loop on a tiny target: greedy output equals HF `generate`."""

import pytest

from speculators_kit import SpeculativeModel
from tests.helpers import make_draft


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_greedy_matches_hf_generate(tiny_targets, tmp_path, kind):
    target = tiny_targets[kind]
    make_draft(target, tmp_path / "d", init="target-last-layer")
    model = SpeculativeModel.from_pretrained(target, tmp_path / "d")
    for prompt in ["hello", "abc def", "the cat sat", "xyz"]:
        ids = model.encode(prompt)
        expected = model.target.model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:]
        assert model.generate(ids, max_new_tokens=20, num_speculative_tokens=3).token_ids == expected.tolist()
