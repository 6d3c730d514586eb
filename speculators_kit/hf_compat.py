"""transformers integration for draft folders (installed by speculators_kit._hf_hook)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoModel, PretrainedConfig

MODEL_TYPE = "speculators_kit_draft"


class SpeculatorDraftConfig(PretrainedConfig):
    """The speculator config.json as a transformers config (all keys kept as attributes)."""

    model_type = MODEL_TYPE

    def to_speculator_config(self):
        from speculators_kit.core.config import parse_config

        data = {k: v for k, v in self.to_dict().items() if k in self._speculator_keys}
        return parse_config(data, "config")

    def __init__(self, **kwargs):
        self._speculator_keys = set(kwargs) - {"model_type"}
        super().__init__(**kwargs)


class SpeculatorDraftModel:
    """`AutoModel.from_pretrained(draft_dir)` returns the core `DraftHead` (a plain nn.Module).

    Shared weights (embeddings) come from the verifier folder named in the config, which must
    be a local path: nothing is downloaded.
    """

    config_class = SpeculatorDraftConfig

    @classmethod
    def from_pretrained(cls, path, *args, target=None, **kwargs):
        from speculators_kit.core.errors import SpecKitError
        from speculators_kit.core.format import load_draft, read_config

        cfg = read_config(path)
        target = target or cfg.speculators_config.verifier.name_or_path
        if not Path(target).is_dir():
            raise SpecKitError(
                f"{path}: its verifier {target!r} is not a local folder; pass target=<target dir>"
            )
        return load_draft(path, target_dir=target)


def _draft_config_dict(path) -> dict | None:
    """The config.json dict of a local speculator-format folder, else None."""
    config = Path(str(path)) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except ValueError:
        return None
    is_draft = isinstance(data, dict) and "speculators_config" in data and "model_type" not in data
    return data if is_draft else None


def register() -> None:
    AutoConfig.register(MODEL_TYPE, SpeculatorDraftConfig, exist_ok=True)
    AutoModel.register(SpeculatorDraftConfig, SpeculatorDraftModel, exist_ok=True)
    original = AutoConfig.from_pretrained.__func__

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        data = _draft_config_dict(pretrained_model_name_or_path)
        if data is not None:
            config = SpeculatorDraftConfig(**data)
            if kwargs.get("return_unused_kwargs"):
                return config, {}  # every key lives in the config; hub kwargs are ignored
            return config
        return original(cls, pretrained_model_name_or_path, *args, **kwargs)

    AutoConfig.from_pretrained = classmethod(from_pretrained)
