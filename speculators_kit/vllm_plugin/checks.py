"""Refuse a draft that does not fit the target when vLLM builds its speculative config (in the
front-end process, before any engine starts), with one message that names the mismatch,
instead of a shape error deep inside a worker's forward."""

from __future__ import annotations

import json
from pathlib import Path


def draft_problem(draft_hf_config, target_model_config, draft_path) -> str | None:
    hidden = target_model_config.get_hidden_size()
    draft_hidden = getattr(draft_hf_config, "target_hidden_size", None) or draft_hf_config.hidden_size
    if draft_hidden != hidden:
        return f"the draft reads hidden states of size {draft_hidden}, the target's are {hidden}"
    vocab = target_model_config.get_vocab_size()
    if getattr(draft_hf_config, "vocab_size", vocab) != vocab:
        return f"the draft's vocabulary has {draft_hf_config.vocab_size} tokens, the target's {vocab}"
    layers = target_model_config.get_total_num_hidden_layers()
    aux = getattr(draft_hf_config, "eagle_aux_hidden_state_layer_ids", None) or []
    if aux and max(aux) > layers:
        return f"the draft reads target layers {list(aux)}, the target has {layers}"
    return fingerprint_problem(draft_path, target_model_config.model)


def fingerprint_problem(draft_path, target_path) -> str | None:
    config = Path(str(draft_path)) / "config.json"
    if not config.is_file() or not Path(str(target_path)).is_dir():
        return None
    want = (json.loads(config.read_text()).get("speculators_kit") or {}).get("target_fingerprint")
    if not want:
        return None
    from speculators_kit.core.fingerprint import target_fingerprint

    have = target_fingerprint(target_path)
    if have != want:
        return (f"it was made for another target (fingerprint {want}; this target's is {have}): "
                f"same shapes, different vocabulary or architecture")
    return None


def install() -> None:
    _check_speculative_config()
    _check_proposer_settings()
    _check_request_threshold()


def _check_proposer_settings() -> None:
    """Bad early-exit / budget settings fail when the engine's config is built, in the front end."""
    from vllm.config import VllmConfig

    original = VllmConfig.__post_init__
    if getattr(original, "speckit", False):
        return

    def __post_init__(self):
        original(self)
        spec = self.speculative_config
        if spec is not None and spec.method in ("eagle", "eagle3"):
            from speculators_kit.vllm_plugin.settings import resolve_settings

            resolve_settings(self)

    __post_init__.speckit = True
    VllmConfig.__post_init__ = __post_init__


def _check_request_threshold() -> None:
    """A request's own early-exit threshold is checked with its other sampling parameters, so a
    bad value is that request's 400, not an engine crash."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    original = SamplingParams._verify_extra_args
    if getattr(original, "speckit", False):
        return

    def _verify_extra_args(self):
        original(self)
        from speculators_kit.vllm_plugin.settings import request_threshold_problem

        problem = request_threshold_problem(self.extra_args)
        if problem:
            raise VLLMValidationError(problem, parameter="extra_args")

    _verify_extra_args.speckit = True
    SamplingParams._verify_extra_args = _verify_extra_args


def _check_speculative_config() -> None:
    from vllm.config.speculative import SpeculativeConfig

    original = SpeculativeConfig.__post_init__
    if getattr(original, "speckit", False):
        return

    def __post_init__(self):
        original(self)
        if self.method in ("eagle", "eagle3") and self.draft_model_config is not None \
                and self.target_model_config is not None:
            problem = draft_problem(self.draft_model_config.hf_config, self.target_model_config, self.model)
            if problem:
                raise ValueError(f"speculators_kit: draft {self.model} does not fit target "
                                 f"{self.target_model_config.model}: {problem}")

    __post_init__.speckit = True
    SpeculativeConfig.__post_init__ = __post_init__
