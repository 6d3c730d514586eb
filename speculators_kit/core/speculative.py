"""Reference speculative generation in plain PyTorch (batch 1, KV caches on both sides).

One round: the draft proposes k tokens as a chain (each step fed its own hidden output),
the target scores [last token, d_1..d_k] in one forward, `verify` accepts a prefix and emits
one more token, both caches are cut back to the accepted length, and the draft re-reads the
accepted positions with the target's own features. Readable rather than fast: this is the
oracle that vLLM's outputs and our training objective are checked against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from speculators_kit.core.draft import DraftCache, DraftHead
from speculators_kit.core.sampling import SamplingParams, sample, to_probs
from speculators_kit.core.verify import verify_greedy, verify_sampling


class Target(Protocol):
    """What the loop needs from a target model (see speculators_kit/target/hf_target.py)."""

    length: int

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append input_ids [1, T] to the cache; return logits [1, T, V] and the draft's
        features [1, T, F] (EAGLE-3: concatenated aux hidden states)."""

    def truncate(self, length: int) -> None: ...

    def reset(self) -> None: ...


@dataclass
class SpeculativeStats:
    k: int
    num_drafts: int = 0  # verification steps (target forwards after the prompt)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    num_emitted_tokens: int = 0
    seconds: float = 0.0

    def record(self, accepted: int, drafted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        for i in range(accepted):
            self.accepted_per_position[i] += 1

    def as_dict(self) -> dict:
        drafts = max(self.num_drafts, 1)
        return {
            "tau": 1.0 + self.num_accepted_tokens / drafts if self.num_drafts else 0.0,
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "accepted_per_position": list(self.accepted_per_position),
            "acceptance_rate_per_position": [a / drafts for a in self.accepted_per_position],
            "num_generated_tokens": self.num_emitted_tokens,
            "tokens_per_s": self.num_emitted_tokens / self.seconds if self.seconds else 0.0,
            "k": self.k,
        }


def _propose(draft: DraftHead, logit_hidden, hidden, position: int, cache: DraftCache, k: int,
             params: SamplingParams, generator):
    """Chain-draft k tokens from the last position. Returns tokens [k], probs [k, V] or None."""
    tokens, probs = [], []
    for i in range(k):
        logits = draft.to_target_vocab(draft.compute_logits(logit_hidden[:, -1]))[0]
        if params.greedy:  # no distribution needed: verification compares argmaxes
            token = logits.argmax(-1)
        else:
            probs.append(to_probs(logits, params))
            token = sample(probs[-1], generator)
        tokens.append(token)
        if i + 1 < k:
            pos = torch.tensor([[position + 1 + i]])
            logit_hidden, hidden = draft.step(token.view(1, 1), hidden[:, -1:], pos, cache)
    return torch.stack(tokens), (torch.stack(probs) if probs else None)


@torch.inference_mode()
def speculative_generate(
    target: Target,
    draft: DraftHead,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    k: int,
    params: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    eos_token_ids: tuple[int, ...] = (),
) -> tuple[list[int], SpeculativeStats]:
    """prompt_ids [1, T]. Returns (generated ids, prompt excluded; stats)."""
    params = params or SamplingParams()
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"prompt_ids must be [1, T], got {tuple(prompt_ids.shape)}")
    stats = SpeculativeStats(k=k, accepted_per_position=[0] * k)
    start = time.perf_counter()
    target.reset()
    logits, features = target.forward(prompt_ids)
    last = int(to_probs(logits[0, -1], params).argmax() if params.greedy
               else sample(to_probs(logits[0, -1], params), generator))
    out = [last]
    cache = DraftCache()
    # The draft reads (x[t+1], feature[t]) for every position the target has verified.
    pending_ids = torch.cat([prompt_ids[:, 1:], torch.tensor([[last]])], dim=1)
    pending_feats = features
    pending_pos = torch.arange(prompt_ids.shape[1])[None]
    while len(out) < max_new_tokens and last not in eos_token_ids:
        committed = cache.length + pending_ids.shape[1]
        logit_hidden, hidden = draft.step(pending_ids, draft.fuse(pending_feats), pending_pos, cache)
        drafted, draft_probs = _propose(draft, logit_hidden, hidden, int(pending_pos[0, -1]), cache,
                                        k, params, generator)
        base = target.length
        logits, features = target.forward(torch.cat([torch.tensor([last]), drafted])[None])
        if params.greedy:
            emitted, accepted = verify_greedy(drafted, logits[0])
        else:
            emitted, accepted = verify_sampling(drafted, draft_probs, to_probs(logits[0], params), generator)
        stats.record(accepted, k)
        target.truncate(base + 1 + accepted)
        cache.truncate(committed)
        pending_ids = torch.tensor([emitted])
        pending_feats = features[:, : accepted + 1]
        pending_pos = torch.arange(base, base + accepted + 1)[None]
        out.extend(emitted)
        last = emitted[-1]
        stop = next((i for i, tok in enumerate(emitted) if tok in eos_token_ids), None)
        if stop is not None:
            out = out[: len(out) - len(emitted) + stop + 1]
            break
    out = out[:max_new_tokens]
    stats.num_emitted_tokens = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats
