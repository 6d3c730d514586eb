"""vLLM's EAGLE-3 Llama draft with each layer's MLP replaced by our MoE MLP (core.layers.MoEMLP:
top-k routing over SwiGLU experts, Qwen3-MoE weight names). Everything else, including the
proposer loop that `method: eagle3` runs, is vLLM's own."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM

from speculators_kit.core.config import MoESpec
from speculators_kit.core.layers import MoEMLP


class SpeckitEagle3MoELlamaForCausalLM(Eagle3LlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.speculative_config.draft_model_config.hf_config
        spec = MoESpec(**config.speckit_moe)
        for layer in self.model.layers:
            layer.mlp = MoEMLP(config.hidden_size, config.intermediate_size, spec)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        moe, rest = {}, []
        for name, tensor in weights:
            if ".mlp.gate." in name or ".mlp.experts." in name:
                moe[name] = tensor
            else:
                rest.append((name, tensor))
        loaded = super().load_weights(rest)  # vLLM 0.32's EAGLE-3 returns None: no strict check
        params = dict(self.model.named_parameters())
        for name, tensor in moe.items():
            if name not in params:
                raise ValueError(f"speculators_kit MoE draft: unexpected weight {name}")
            params[name].data.copy_(tensor)
        missing = [n for n in params if (".mlp.gate." in n or ".mlp.experts." in n) and n not in moe]
        if missing:
            raise ValueError(f"speculators_kit MoE draft: weights missing from the checkpoint: {missing[:4]}")
        if loaded is None:
            return None
        return set(loaded) | {"model." + name for name in moe}
