"""The training-time-test objective (EAGLE-3, arXiv 2503.01840) and its acceptance estimate.

Targets are the target model's next-token distributions, recomputed from the stored pre-norm
last-layer hidden state through the target's final norm and lm_head (frozen buffers, restricted
to the draft vocabulary and renormalised there, as vLLM can only accept draft-vocab tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speculators_kit.core.build import target_config
from speculators_kit.core.format import load_target_tensors, shared_target_weight
from speculators_kit.core.vocab import draft_ids_of

MOE_BALANCE_WEIGHT = 0.01


def step_weights(spec, steps: int) -> list[float]:
    if spec == "uniform":
        return [1.0] * steps
    if spec == "decay":
        return [0.8**j for j in range(steps)]
    return list(spec)


class DraftTrainModule(nn.Module):
    """The draft head (trained) plus the target's output layer (frozen buffers)."""

    def __init__(self, head, target_dir, loss_cfg, train_lm_head: bool = False):
        super().__init__()
        self.head = head
        self.kind = loss_cfg.kind
        self.steps = loss_cfg.ttt_steps
        self.weights = step_weights(loss_cfg.step_weights, self.steps)
        self.all_tokens = loss_cfg.tokens == "all"
        tcfg = target_config(target_dir)
        self.eps = tcfg.get("rms_norm_eps", 1e-6)
        norm = load_target_tensors(target_dir, ("model.norm.weight",))["model.norm.weight"]
        lm_head = shared_target_weight(target_dir, "lm_head.weight")
        self.register_buffer("target_norm", norm.float())
        self.register_buffer("target_lm_head", lm_head[draft_ids_of(head)].float())
        # The embedding is the target's, and so is EAGLE-1's lm_head: never trained. EAGLE-3's
        # lm_head starts as the target's rows for the draft vocabulary and stays frozen unless
        # asked: trained, it was most of the draft's weights and overfit (held-out loss 1.66 vs
        # 1.04 in training on the `--budget full` store).
        for name, p in head.named_parameters():
            if name == "embed_tokens.weight" or (name == "lm_head.weight" and not
                                                 (train_lm_head and head.config.arch == "eagle3")):
                p.requires_grad_(False)

    def normed(self, last: torch.Tensor) -> torch.Tensor:
        x = last.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.target_norm.float()
        return x.to(last.dtype)

    def forward(self, batch: dict, chain: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, stats). The loss covers the ttt_steps trained steps; stats, the
        acceptance of chains of `chain` (>= ttt_steps, default ttt_steps) drafted tokens:
        [chains, accepted chains of length 1..chain, weighted positions]."""
        dtype = self.head.fc.weight.dtype  # the engine's compute dtype (bf16 or fp32)
        hidden = batch["hidden"].to(dtype)
        normed = self.normed(hidden[..., -1, :])
        with torch.no_grad():
            target_logp = F.log_softmax(normed @ self.target_lm_head.to(dtype).T, dim=-1, dtype=torch.float32)
        feats = hidden[..., :-1, :].flatten(-2) if self.head.config.arch == "eagle3" else normed
        ids, valid, dist = batch["token_ids"], batch["valid"], batch["dist_mask"]
        doc, pos = batch.get("doc"), batch.get("positions")
        chain = max(chain or self.steps, self.steps)
        outputs = self.head.forward_train(ids[:, 1:], feats[:, :-1], chain, attention_mask=valid[:, 1:],
                                          positions=None if pos is None else pos[:, :-1],
                                          doc_ids=None if doc is None else doc[:, :-1])
        total, matches, masks = 0.0, [], []
        for j, logits in enumerate(outputs):
            n = ids.shape[1] - 1 - j  # positions whose step-j prediction exists
            draft_logp = F.log_softmax(logits[:, :n].float(), dim=-1)
            tgt = target_logp[:, 1 + j: 1 + j + n]
            real = valid[:, 1 + j: 1 + j + n]
            if doc is not None:  # a packed chain must not run into the next sample
                real = real & (doc[:, :n] == doc[:, 1 + j: 1 + j + n])
            mask = real & dist[:, 1 + j: 1 + j + n]
            # Training on every token also fits the prompts' distributions (the target wrote
            # them too, or they are context it reads); evaluation always scores answers.
            trained = real if self.all_tokens and self.training else mask
            if j < self.steps:
                loss = self._loss(draft_logp, tgt)
                total = total + self.weights[j] * (loss * trained).sum() / trained.sum().clamp(min=1)
            matches.append(draft_logp.argmax(-1) == tgt.argmax(-1))
            masks.append(mask)
        total = total / sum(self.weights) + MOE_BALANCE_WEIGHT * self._balance()
        return total, chain_stats(matches, masks)

    def _loss(self, draft_logp, target_logp):
        if self.kind == "kl":
            return F.kl_div(draft_logp, target_logp, log_target=True, reduction="none").sum(-1)
        if self.kind == "ce":  # hard distillation: the target's greedy token
            return -draft_logp.gather(-1, target_logp.argmax(-1, keepdim=True)).squeeze(-1)
        return 0.5 * (draft_logp.exp() - target_logp.exp()).abs().sum(-1)

    def _balance(self):
        losses = [m.balance_loss for m in self.head.modules() if hasattr(m, "balance_loss")]
        return sum(losses) / len(losses) if losses else 0.0


def chain_stats(matches: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """Greedy acceptance of a k-step chain started at each position where all k steps are
    trained: [chains, accepted through step 1, ..., through step k, weighted positions]."""
    k = len(matches)
    n = matches[-1].shape[1]
    ok = torch.ones_like(masks[-1])
    for m in masks:
        ok = ok & m[:, :n]
    stats = [ok.sum()]
    chain = ok
    for j in range(k):
        chain = chain & matches[j][:, :n]
        stats.append(chain.sum())
    stats.append(masks[0].sum())
    return torch.stack(stats).double()


def tau_from_stats(stats: torch.Tensor) -> tuple[float, list[float]]:
    """τ = 1 + E[accepted draft tokens]; also the conditional acceptance per position."""
    chains = float(stats[0])
    if chains == 0:
        return 1.0, []
    through = [float(x) / chains for x in stats[1:-1]]
    per_pos = [through[0]] + [b / a if a else 0.0 for a, b in zip(through, through[1:])]
    return 1.0 + sum(through), per_pos
