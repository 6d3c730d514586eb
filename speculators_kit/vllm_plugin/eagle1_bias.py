"""vLLM's EAGLE-1 Llama draft with a bias on fc, as SafeAILab EAGLE-1/EAGLE-2 and HASS
checkpoints have it (vLLM 0.32 builds fc without one and would refuse the weight)."""

from __future__ import annotations

from torch import nn
from vllm.model_executor.models.llama_eagle import EagleLlamaForCausalLM


class SpeckitEagleBiasLlamaForCausalLM(EagleLlamaForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        old = self.model.fc
        weight = old.weight
        self.model.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=True, dtype=weight.dtype,
                                  device=weight.device)
