"""Capture through HF transformers: slow, one sequence at a time, but an independent
implementation to cross-check vLLM's capture (and a fallback where vLLM cannot run a target).

Records match the vLLM backend's: with regeneration the answer's last token is not fed back,
so it has no hidden state and is not stored.
"""

from __future__ import annotations

from pathlib import Path

import torch


class HFCapture:
    name = "hf"

    def __init__(self, target_dir: Path, layer_ids: list[int], max_model_len: int, model_dtype: str,
                 seed: int):
        from transformers import AutoModelForCausalLM

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.model = AutoModelForCausalLM.from_pretrained(
            str(target_dir), dtype=dtype.get(model_dtype, torch.float32)).eval()
        self.layer_ids = layer_ids
        self.seed = seed
        self.max_model_len = max_model_len
        self._prenorm = None
        # The last stored layer is the pre-norm output of the last decoder layer, as vLLM gives
        # it; HF's output_hidden_states[-1] is after the final norm, so read the norm's input.
        norm = self.model.get_decoder().norm
        norm.register_forward_pre_hook(lambda _m, args: setattr(self, "_prenorm", args[0]))

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                 seeds: list[int], progress: str | None = None) -> list[list[int]]:
        from tqdm import tqdm

        outs = []
        for prompt, seed in tqdm(list(zip(prompts, seeds)), desc=progress, unit="prompt", disable=not progress):
            torch.manual_seed(seed)
            ids = torch.tensor([prompt])
            kwargs = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens}
            if temperature > 0:
                kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            outs.append(out[0, len(prompt):].tolist())
        return outs

    startup_s = 0.0  # the model loads in __init__; nothing starts later

    def start_capture(self, items, regen):
        """(items, regen) for capture: this backend answers each item as it captures it."""
        return items, regen

    @torch.inference_mode()
    def capture(self, items, regen) -> list[dict]:
        from speculators_kit.datagen.vllm_backend import _seed

        records = []
        for item in items:
            tokens = list(item.token_ids)
            if regen:
                budget = min(regen.max_new_tokens, self.max_model_len - len(tokens))
                answer = self.generate([tokens], budget, regen.temperature, [_seed(item, self.seed)])[0]
                tokens = (tokens + answer)[:-1]
            records.append({"token_ids": torch.tensor(tokens), "hidden": self.hidden_states(tokens)})
        return records

    def hidden_states(self, tokens: list[int]) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
        layers = [out.hidden_states[k][0] for k in self.layer_ids[:-1]] + [self._prenorm[0]]
        return torch.stack(layers, dim=1).float()
