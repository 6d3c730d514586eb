"""Public Python API: `SpeculativeModel.from_pretrained(target, draft).generate(...)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import load_draft
from speculators_kit.core.sampling import SamplingParams
from speculators_kit.core.speculative import speculative_generate
from speculators_kit.target.embedded import resolve_target


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids, prompt excluded
    text: str
    stats: dict


class SpeculativeModel:
    """An HF target plus a draft head, generating with the reference speculative loop."""

    def __init__(self, target_dir: Path, draft, hf_model, tokenizer):
        from speculators_kit.target.hf_target import HFTarget

        self.target_dir = target_dir
        self.draft = draft
        self.tokenizer = tokenizer
        self.target = HFTarget(hf_model, draft.config)
        self.vocab_size = hf_model.get_input_embeddings().num_embeddings
        eos = hf_model.generation_config.eos_token_id
        self.eos_token_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    @classmethod
    def from_pretrained(cls, target: str | Path, draft: str | Path, dtype=torch.float32):
        """target: HF folder or embedded name; draft: a speculator-format directory."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target_dir = resolve_target(target)
        head = load_draft(draft, target_dir=target_dir, dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype)
        return cls(target_dir, head, model, AutoTokenizer.from_pretrained(target_dir))

    def encode(self, prompt: str | list[dict], chat: bool = True) -> torch.Tensor:
        """Text (or chat messages) -> [1, T] ids, through the chat template when it has one."""
        if isinstance(prompt, list) or (chat and self.tokenizer.chat_template):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt
        return torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])

    def generate(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, num_speculative_tokens: int | None = None, seed: int = 0,
                 chat: bool = True) -> GenerationResult:
        if isinstance(prompt, torch.Tensor):
            ids = prompt if prompt.dim() == 2 else prompt[None]
        elif isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], int):
            ids = torch.tensor([list(prompt)])
        else:
            ids = self.encode(prompt, chat=chat)
        if ids.shape[1] == 0:
            raise SpecKitError("the prompt is empty")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.numel():  # an IndexError deep in the embedding otherwise
            raise SpecKitError(f"prompt token id {int(bad[0])} is outside the target's vocabulary "
                               f"(0..{self.vocab_size - 1}); encode text with this target's tokenizer")
        k = self.draft.config.num_speculative_tokens if num_speculative_tokens is None else num_speculative_tokens
        if k < 1 or max_new_tokens < 1:  # 0 drafted as the default k, -1 failed deep in the loop
            raise SpecKitError(f"num_speculative_tokens ({k}) and max_new_tokens ({max_new_tokens}) "
                               "must be at least 1")
        generator = torch.Generator().manual_seed(seed)
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
        tokens, stats = speculative_generate(
            self.target, self.draft, ids, max_new_tokens, k, params, generator, self.eos_token_ids
        )
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerationResult(tokens, text, stats.as_dict())
