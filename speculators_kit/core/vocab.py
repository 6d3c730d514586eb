"""Draft vocabulary reduction: keep the target tokens the draft will most often need to propose.

d2t holds offsets (target_id = draft_id + d2t[draft_id], vLLM's convention) and t2d marks the
target ids the draft can propose. Draft ids are ordered by target id, so d2t is non-decreasing.
"""

from __future__ import annotations

import torch

from speculators_kit.core.errors import SpecKitError


def select_draft_vocab(counts: torch.Tensor, size: int, special_ids: list[int] = ()) -> torch.Tensor:
    """The `size` target ids to keep, sorted: special ids first, then by count (ties by id)."""
    vocab = len(counts)
    if not 0 < size <= vocab:
        raise SpecKitError(f"draft_vocab_size {size} must be between 1 and the target vocab {vocab}")
    score = counts.double().clone()
    specials = [i for i in special_ids if i is not None and 0 <= i < vocab]
    score[specials] = float("inf")
    # stable: equal counts keep id order, so unseen tokens fill up from the lowest ids
    order = torch.sort(-score, stable=True).indices
    return torch.sort(order[:size]).values


def vocab_maps(draft_ids: torch.Tensor, target_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    d2t = draft_ids - torch.arange(len(draft_ids))
    t2d = torch.zeros(target_vocab, dtype=torch.bool)
    t2d[draft_ids] = True
    return d2t, t2d


def apply_draft_vocab(head, draft_ids: torch.Tensor, target_lm_head: torch.Tensor | None = None) -> None:
    """Set a reduced-vocab head's d2t/t2d; with the target's lm_head, copy its rows too (so a
    target-initialised head starts from the target's output layer on the kept tokens)."""
    if head.d2t is None:
        if len(draft_ids) != head.config.layer.vocab_size:
            raise SpecKitError("this draft has a full vocabulary; it takes no vocab mapping")
        return
    d2t, t2d = vocab_maps(draft_ids, len(head.t2d))
    with torch.no_grad():
        head.d2t.copy_(d2t)
        head.t2d.copy_(t2d)
        if target_lm_head is not None:
            head.lm_head.weight.copy_(target_lm_head[draft_ids])


def draft_ids_of(head) -> torch.Tensor:
    n = head.config.draft_vocab_size
    return torch.arange(n) + (head.d2t.cpu() if head.d2t is not None else 0)
