"""Verification of a draft chain against one target forward.

Greedy: accept while the draft token is the target's argmax. Sampling: speculative
sampling (Leviathan et al., arXiv 2211.17192; Chen et al., arXiv 2302.01318): accept draft
token x with probability min(1, target_probs[x] / draft_probs[x]); on the first rejection
sample from the normalised residual max(target_probs - draft_probs, 0); when every draft
token is accepted, sample a bonus token from the target's next distribution. The emitted
tokens are distributed exactly as target-only sampling.
"""

from __future__ import annotations

import torch


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[list[int], int]:
    """draft_tokens [k]; target_logits [k+1, V]. Returns (emitted tokens, number accepted)."""
    best = target_logits.argmax(-1).tolist()
    drafted = draft_tokens.tolist()
    accepted = 0
    while accepted < len(drafted) and drafted[accepted] == best[accepted]:
        accepted += 1
    return drafted[:accepted] + [best[accepted]], accepted


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[list[int], int]:
    """draft_tokens [k]; draft_probs [k, V]; target_probs [k+1, V] (same transform on both).
    Returns (emitted tokens, number accepted)."""
    k = draft_tokens.shape[0]
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64)
    emitted: list[int] = []
    for i in range(k):
        token = int(draft_tokens[i])
        ratio = target_probs[i, token].double() / draft_probs[i, token].double()
        if uniforms[i] < ratio:  # accepted with probability min(1, ratio)
            emitted.append(token)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp_min(0)
        if residual.sum() <= 0:  # numerically identical rows: the residual is empty
            residual = target_probs[i]
        emitted.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return emitted, i
    emitted.append(int(torch.multinomial(target_probs[k], 1, generator=generator)))
    return emitted, k
