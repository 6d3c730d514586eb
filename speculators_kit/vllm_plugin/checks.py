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
    return _fingerprint_problem(draft_path, target_model_config.model)


def _fingerprint_problem(draft_path, target_path) -> str | None:
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
