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


@pytest.mark.parametrize("setting", [{"num_speculative_tokens": 0}, {"num_speculative_tokens": -2},
                                     {"max_new_tokens": 0}])
def test_a_count_below_one_is_refused(tiny_llama, tmp_path, setting):
    from speculators_kit.core.errors import SpecKitError

    make_draft(tiny_llama, tmp_path / "d")
    model = SpeculativeModel.from_pretrained(tiny_llama, tmp_path / "d")
    with pytest.raises(SpecKitError, match="must be at least 1"):
        model.generate("hello", **setting)


@pytest.mark.parametrize("ids, bad", [([5, 6, 256], 256), ([-1, 5], -1)])
def test_a_token_id_outside_the_vocabulary_is_named(tiny_llama, tmp_path, ids, bad):
    from speculators_kit.core.errors import SpecKitError

    make_draft(tiny_llama, tmp_path / "d")
    model = SpeculativeModel.from_pretrained(tiny_llama, tmp_path / "d")
    with pytest.raises(SpecKitError, match=rf"token id {bad} is outside .*\(0..255\)"):
        model.generate(ids, max_new_tokens=2)  # was an IndexError deep in the embedding
