"""`speckit eval --proposer`: what reaches the plugin and what results.json records, over a draft
whose config.json carries proposer defaults."""

import pytest

from speculators_kit.core.config import ProposerSettings
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import read_config, save_draft
from speculators_kit.eval.run import _effective_settings, _proposer_settings
from tests.helpers import make_draft


@pytest.fixture()
def draft_with_defaults(tiny_llama, tmp_path):
    head = make_draft(tiny_llama, tmp_path / "d", draft_vocab_size=64)
    head.config.speculators_kit.proposer = ProposerSettings(early_exit_threshold=0.3, token_budget=8)
    save_draft(head, tmp_path / "d", target_dir=tiny_llama, overwrite=True)
    assert read_config(tmp_path / "d").speculators_kit.proposer.token_budget == 8
    return str(tmp_path / "d")


def test_overrides_keep_explicit_nulls_and_drop_unset_fields():
    sent = _proposer_settings({"early_exit_threshold": 0, "token_budget": None}, "vllm")
    assert sent == {"early_exit_threshold": 0, "token_budget": None}


def test_the_drafts_defaults_apply_under_the_overrides(draft_with_defaults):
    assert _effective_settings(draft_with_defaults, {}) == {
        "early_exit_threshold": 0.3, "token_budget": 8, "log_interval_s": 30.0}
    only_exit_off = {"speculators_kit": _proposer_settings({"early_exit_threshold": 0}, "vllm")}
    assert _effective_settings(draft_with_defaults, only_exit_off)["token_budget"] == 8
    all_off = {"speculators_kit": _proposer_settings(
        {"early_exit_threshold": 0, "token_budget": None, "request_budget": None}, "vllm")}
    assert _effective_settings(draft_with_defaults, all_off) is None  # fixed k: nothing on


def test_bad_settings_and_the_hf_engine_are_refused():
    with pytest.raises(SpecKitError, match="known settings: early_exit_threshold"):
        _proposer_settings({"early_exit": 0.3}, "vllm")
    with pytest.raises(SpecKitError, match="need --engine vllm"):
        _proposer_settings({"early_exit_threshold": 0.3}, "hf")
