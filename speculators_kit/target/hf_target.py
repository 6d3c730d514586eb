"""An HF-transformers target behind the small interface the reference loop needs."""

from __future__ import annotations

from pathlib import Path

import torch

from speculators_kit.core.config import SpeculatorConfig


class HFTarget:
    """Wraps an HF causal LM with a KV cache it can cut back after a rejected draft.

    `features` are what the draft's `fuse` expects: for EAGLE-3 the hidden states after the
    aux layers (id k = output of k decoder layers, 0 = embeddings, as vLLM counts), joined on
    the last axis; for EAGLE-1 the final normed hidden state.
    """

    def __init__(self, model, draft_config: SpeculatorConfig):
        self.model = model.eval()
        self.arch = draft_config.arch
        self.layer_ids = list(draft_config.eagle_aux_hidden_state_layer_ids or [])
        self.cache = None
        self.length = 0

    @classmethod
    def from_pretrained(cls, target_dir: Path, draft_config: SpeculatorConfig, dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype)
        return cls(model, draft_config)

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.length = 0

    def forward(self, input_ids: torch.Tensor):
        if self.cache is None:
            self.reset()
        positions = torch.arange(self.length, self.length + input_ids.shape[1])[None]
        out = self.model(
            input_ids=input_ids, past_key_values=self.cache, position_ids=positions,
            use_cache=True, output_hidden_states=True,
        )
        self.length += input_ids.shape[1]
        hidden = out.hidden_states  # [L+1] x [1, T, H]; the last one is after the final norm
        if self.arch == "eagle3":
            features = torch.cat([hidden[i] for i in self.layer_ids], dim=-1)
        else:
            features = hidden[-1]
        return out.logits, features

    def truncate(self, length: int) -> None:
        if length < self.length:
            self.cache.crop(length - self.length)  # negative: drop that many tokens
        self.length = length
