"""Where early-exit / budget settings come from (draft config.json, then --additional-config) and
the messages a bad setting gets. vLLM's config objects are replaced by the two attributes read."""

import json
from types import SimpleNamespace

import pytest

from speculators_kit.vllm_plugin.settings import (
    request_threshold,
    request_threshold_problem,
    resolve_settings,
)


def engine_config(draft, override=None):
    return SimpleNamespace(speculative_config=SimpleNamespace(model=str(draft)),
                           additional_config={"speculators_kit": override} if override is not None else {})


@pytest.fixture()
def draft(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"speculators_kit": {"proposer": {"early_exit_threshold": 0.3, "token_budget": 16}}}))
    return tmp_path


def test_draft_defaults_then_serve_time_overrides(draft):
    assert resolve_settings(engine_config(draft)).model_dump(exclude_none=True) == {
        "early_exit_threshold": 0.3, "token_budget": 16, "log_interval_s": 30.0}
    s = resolve_settings(engine_config(draft, {"early_exit_threshold": 0.5, "request_budget": 2}))
    assert (s.early_exit_threshold, s.token_budget, s.request_budget) == (0.5, 16, 2)
    assert not resolve_settings(engine_config(draft.parent / "missing")).active
    off = resolve_settings(engine_config(draft, {"early_exit_threshold": 0, "token_budget": None}))
    assert off.early_exit_threshold == 0 and not off.active  # 0 turns the draft's default off


@pytest.mark.parametrize("override, expected", [
    ({"early_exit": 0.3}, "in --additional-config: early_exit: Extra inputs are not permitted"),
    ({"early_exit_threshold": 1.5}, "early_exit_threshold: Input should be less than 1"),
    ({"token_budget": 0}, "token_budget: Input should be greater than or equal to 1"),
    (0.3, "'speculators_kit' must be an object"),
])
def test_bad_overrides_name_the_setting_and_the_channel(draft, override, expected):
    with pytest.raises(ValueError, match="speculators_kit") as e:
        resolve_settings(engine_config(draft, override))
    assert expected in str(e.value)


def test_bad_default_in_the_drafts_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"speculators_kit": {"proposer": {"budget": 3}}}))
    with pytest.raises(ValueError, match=r"config.json \(speculators_kit.proposer\): budget"):
        resolve_settings(engine_config(tmp_path))


def test_a_request_can_set_or_turn_off_its_own_threshold():
    params = SimpleNamespace(extra_args={"speckit_early_exit_threshold": 0.6})
    assert request_threshold(params, 0.3) == 0.6
    assert request_threshold(SimpleNamespace(extra_args={"speckit_early_exit_threshold": 0}), 0.3) is None
    assert request_threshold(SimpleNamespace(extra_args=None), 0.3) == 0.3
    assert request_threshold_problem({"speckit_early_exit_threshold": 0.2}) is None
    for bad in (1.0, -0.1, "high", True):
        assert "must be a number in [0, 1)" in request_threshold_problem({"speckit_early_exit_threshold": bad})
