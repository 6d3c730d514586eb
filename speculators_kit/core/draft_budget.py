"""How many of its drafted tokens each request proposes in one engine step: dynamic early exit
and token budgets, as pure functions of the draft's confidences.

`conf[i, j]` is the draft's probability of the token it drafted for request i at step j (its top
token when drafting greedily). Verification stays exact whatever these functions decide: they
only choose a prefix of each request's draft, and a shorter draft is verified like any other.

- early exit: request i keeps the tokens before its first `conf < threshold`;
- request budget: at most `request_budget` tokens per request;
- token budget: at most `token_budget` tokens in the whole batch, the most likely to be accepted
  first. A token's score is the product of the confidences up to it (an estimate of the chance
  that the whole prefix is accepted); scores never grow along a draft, and ties go to the earlier
  position, so the chosen set is always a prefix of every request's draft.
"""

from __future__ import annotations

import torch


def _allowed(conf: torch.Tensor, thresholds: torch.Tensor, request_budget: int | None) -> torch.Tensor:
    """[B, J] bool: the prefix each request may propose before the token budget is applied.
    `thresholds` is [B]; NaN means no early exit for that request."""
    keep = ~(conf < thresholds[:, None])  # NaN threshold compares False: never exits
    keep = keep.to(torch.int8).cumprod(dim=1).bool()
    if request_budget is not None:
        keep[:, request_budget:] = False
    return keep


def _scores(conf: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return conf.double().cumprod(dim=1).masked_fill(~keep, -1.0)


def draft_lengths(conf: torch.Tensor, thresholds: torch.Tensor, token_budget: int | None,
                  request_budget: int | None) -> torch.Tensor:
    """[B] int64: how many leading draft tokens each request proposes."""
    keep = _allowed(conf, thresholds, request_budget)
    if token_budget is not None and int(keep.sum()) > token_budget:
        scores = _scores(conf, keep)
        # Position-major flattening + stable sort: equal scores keep the earlier position first.
        flat = scores.t().reshape(-1)
        order = torch.sort(flat, descending=True, stable=True).indices[:token_budget]
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[order] = True
        keep = chosen.view(conf.shape[1], conf.shape[0]).t() & keep
    return keep.sum(dim=1)


def drafting_done(conf: torch.Tensor, thresholds: torch.Tensor, token_budget: int | None,
                  request_budget: int | None, num_steps: int) -> bool:
    """After the draft steps in `conf` ([B, steps so far]), would any further step be proposed?
    No when every request has exited or hit its budget, or when the batch budget is already
    filled by tokens at least as likely as anything a later step could draft."""
    steps = conf.shape[1]
    if steps >= num_steps or (request_budget is not None and steps >= request_budget):
        return True
    keep = _allowed(conf, thresholds, request_budget)
    active = keep[:, -1]
    if not bool(active.any()):
        return True
    if token_budget is None:
        return False
    scores = _scores(conf, keep)
    # A later token of request i scores at most request i's current score.
    best_future = scores[active, -1].max()
    return int((scores >= best_future).sum()) >= token_budget
