"""The training-time-test objective (EAGLE-3, arXiv 2503.01840) and its acceptance estimate.

Targets are the target model's next-token distributions, recomputed from the stored pre-norm
last-layer hidden state through the target's final norm and lm_head (frozen buffers, restricted
to the draft vocabulary and renormalised there, as vLLM can only accept draft-vocab tokens).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from speculators_kit.core.build import target_config
from speculators_kit.core.format import load_target_tensors, shared_target_weight
from speculators_kit.core.layers import MoEMLP
from speculators_kit.core.vocab import draft_ids_of
from speculators_kit.train.acceptance import chain_stats, walk_stats

MOE_BALANCE_WEIGHT = 0.01
DENSE_ROWS = 0.8  # steps > 0 run on every position when at least this share of them is read


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
        self.noise = loss_cfg.feature_noise
        self.align = loss_cfg.align
        self.feature_weight = loss_cfg.feature_weight
        if loss_cfg.dropout:  # hooks, so the head (and what vLLM serves) has no dropout in it
            for layer in head.layers:
                for part in (layer.self_attn.o_proj, layer.mlp):
                    part.register_forward_hook(partial(_residual_dropout, loss_cfg.dropout))
        tcfg = target_config(target_dir)
        self.eps = tcfg.get("rms_norm_eps", 1e-6)
        norm = load_target_tensors(target_dir, ("model.norm.weight",))["model.norm.weight"]
        lm_head = shared_target_weight(target_dir, "lm_head.weight")
        self.register_buffer("target_norm", norm.float())
        draft_ids = draft_ids_of(head)
        self.register_buffer("target_lm_head", lm_head[draft_ids].float())
        to_draft = torch.full((lm_head.shape[0],), -1, dtype=torch.long)  # -1: not in the draft vocab
        to_draft[draft_ids] = torch.arange(len(draft_ids))
        self.register_buffer("to_draft", to_draft, persistent=False)
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

    def forward(self, batch: dict, chain: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (loss, stats). The loss covers the ttt_steps trained steps; stats (evaluation
        only, None in training), the acceptance of chains of `chain` (>= ttt_steps, default
        ttt_steps) drafted tokens: chain_stats then walk_stats (train/acceptance.py), 2 * chain + 3
        numbers."""
        dtype = self.head.fc.weight.dtype  # the engine's compute dtype (bf16 or fp32)
        hidden = batch["hidden"].to(dtype)
        eagle3 = self.head.config.arch == "eagle3"
        # EAGLE-1 reads the normed last layer, which is also what the target's lm_head reads
        clean = hidden[..., :-1, :] if eagle3 else self.normed(hidden[..., -1, :])
        feats = self._noisy(clean).flatten(-2) if eagle3 else self._noisy(clean)
        ids, valid, dist = batch["token_ids"], batch["valid"], batch["dist_mask"]
        doc, pos = batch.get("doc"), batch.get("positions")
        chain = max(chain or self.steps, self.steps)
        masks = [self._masks(j, ids.shape[1] - 1 - j, valid, dist, doc) for j in range(chain)]
        trained_rows = [trained for trained, _ in masks]
        # Only the scored positions go through the lm_heads and the [.., Vd] loss, and through
        # the layers of steps > 0: with the loss on answers that skips the prompts (~40% of the
        # `--budget small` store's tokens).
        outputs = self.head.forward_train(ids[:, 1:], feats[:, :-1], chain, attention_mask=valid[:, 1:],
                                          positions=None if pos is None else pos[:, :-1],
                                          doc_ids=None if doc is None else doc[:, :-1], logits=False,
                                          rows=layer_rows(trained_rows))
        last = hidden[..., -1, :] if eagle3 else clean
        target_p, plogp, where, target_x = self._target_probs(last, trained_rows, normed=not eagle3)
        total, matches, kept = 0.0, [], None
        for j, (out, (trained, mask)) in enumerate(zip(outputs, masks)):
            read = out[:, : trained.shape[1]][trained]
            logits = self.head.compute_logits(read).float()
            tgt = target_p[where[j]]
            if j < self.steps:
                loss = self._loss(logits, tgt, plogp[where[j]])
                if self.feature_weight and self.training:
                    loss = loss + self.feature_weight * _relative_error(read, target_x[where[j]])
                if self.align and self.training:
                    if kept is not None:  # over all rows still: step j weighs P(chain kept to j)
                        loss = loss * kept[trained]
                    kept = self._kept(kept, logits, trained, ids, j) if j + 1 < self.steps else None
                total = total + self.weights[j] * loss.sum() / trained.sum().clamp(min=1)
            if not self.training:  # trained is mask here: every chain position has its match
                match = torch.zeros_like(mask)
                match[trained] = logits.argmax(-1) == tgt.argmax(-1)
                matches.append(match)
        total = total / sum(self.weights) + MOE_BALANCE_WEIGHT * self._balance()
        if self.training:
            return total, None
        scored = [m for _, m in masks]
        return total, torch.cat([chain_stats(matches, scored), walk_stats(matches, scored)])

    def _kept(self, kept, logits, trained, ids, j: int) -> torch.Tensor:
        """Step j + 1's [B, n - 1] positions whose chain the draft kept (loss.align): kept to step
        j (None: all) and step j's draft had the token step j + 1 is fed, x[t + 2 + j], among its
        top `align`. Rows step j did not train count as kept."""
        n = trained.shape[1]
        fed = F.pad(self.to_draft[ids[:, 2 + j: 1 + j + n].clamp(min=0)], (0, 1), value=-1)[trained]
        hit = torch.ones_like(trained)
        hit[trained] = (logits.topk(self.align, -1).indices == fed[:, None]).any(-1)
        return (hit if kept is None else hit & kept)[:, : n - 1]

    def _noisy(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [.., D] plus U(-a, a) * their RMS over D (a = loss.feature_noise), in training only;
        the targets are computed from the clean last layer."""
        if not (self.training and self.noise):
            return feats
        rms = feats.float().pow(2).mean(-1, keepdim=True).sqrt()
        noise = (torch.rand(feats.shape, device=feats.device) * 2 - 1) * (self.noise * rms)
        return (feats.float() + noise).to(feats.dtype)

    def _masks(self, j: int, n: int, valid, dist, doc) -> tuple[torch.Tensor, torch.Tensor]:
        """Step j's [B, n] (trained, scored) positions: the step-j prediction at t is of t+1+j."""
        real = valid[:, 1 + j: 1 + j + n]
        if doc is not None:  # a packed chain must not run into the next sample
            real = real & (doc[:, :n] == doc[:, 1 + j: 1 + j + n])
        mask = real & dist[:, 1 + j: 1 + j + n]
        # Training on every token also fits the prompts' distributions (the target wrote
        # them too, or they are context it reads); evaluation always scores answers.
        return (real if self.all_tokens and self.training else mask), mask

    @torch.no_grad()
    def _target_probs(self, last: torch.Tensor, rows: list[torch.Tensor], normed: bool = False):
        """The target's fp32 probabilities p [N, Vd] and sum(p log p) [N] at each position some
        step's rows predict (once each: positions overlap across steps), per step the index into
        them of each of its rows, and the normed last layer [N, H] the target's lm_head read
        there. `last` is the pre-norm last layer, or normed already."""
        bsz, seq = last.shape[:2]
        need = torch.zeros(bsz, seq, dtype=torch.bool, device=last.device)
        for j, r in enumerate(rows):
            need[:, 1 + j: 1 + j + r.shape[1]] |= r
        flat = need.flatten().nonzero().squeeze(1)
        slot = torch.empty(bsz * seq, dtype=torch.long, device=last.device)
        slot[flat] = torch.arange(len(flat), device=last.device)
        x = last.flatten(0, 1)[flat]
        x = x if normed else self.normed(x)
        logp = F.log_softmax(x @ self.target_lm_head.to(x.dtype).T, dim=-1, dtype=torch.float32)
        p = logp.exp()
        where = []
        for j, r in enumerate(rows):
            b, t = r.nonzero(as_tuple=True)
            where.append(slot[b * seq + 1 + j + t])
        return p, _row_dot(p, logp), where, x

    def _loss(self, logits: torch.Tensor, target_p: torch.Tensor, plogp: torch.Tensor) -> torch.Tensor:
        """[N, Vd] fp32 draft logits, target probabilities, [N] their sum(p log p) -> [N] losses."""
        if self.kind == "kl":
            return SoftTargetKL.apply(logits, target_p, plogp)
        draft_logp = F.log_softmax(logits, dim=-1)
        if self.kind == "ce":  # hard distillation: the target's greedy token
            return -draft_logp.gather(-1, target_p.argmax(-1, keepdim=True)).squeeze(-1)
        return 0.5 * (draft_logp.exp() - target_p).abs().sum(-1)

    def _balance(self):
        """The MoE layers' balance terms of this batch, over every TTT step, averaged."""
        terms = []
        for m in self.head.modules():
            if isinstance(m, MoEMLP):
                terms += m.balance_terms
                m.balance_terms = []
        return sum(terms) / len(terms) if terms else 0.0


def _residual_dropout(p: float, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    return F.dropout(out, p, module.training)


def layer_rows(trained: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Per TTT step, the [B, T] positions whose layer outputs are read (None: run them all):
    those it scores ([B, T - j] at step j) and those feeding a later step's."""
    rows = [F.pad(t, (0, j)) for j, t in enumerate(trained)]
    for j in range(len(rows) - 2, 0, -1):
        rows[j] = rows[j] | rows[j + 1]
    # Gathering rows costs ~5% of a step (all-token loss: 3.2 -> 3.4 s), so only sparse ones.
    return [r if r.float().mean() < DENSE_ROWS else None for r in rows]


class SoftTargetKL(torch.autograd.Function):
    """KL(p || softmax(logits)) per row, [N, V] -> [N], as sum(p log p) - p.logits + logsumexp:
    one pass over [N, V] forward and one backward (softmax - p). log_softmax then kl_div each
    wrote [N, V] tensors, forward and backward: a third of an fp32 step on a 2-core CPU."""

    @staticmethod
    def forward(ctx, logits, p, plogp):
        """p: the target's probabilities; plogp: their sum(p log p), made once per target row."""
        lse = torch.logsumexp(logits, -1)
        ctx.save_for_backward(logits, p, lse)
        return plogp - _row_dot(p, logits) + lse

    @staticmethod
    def backward(ctx, grad):
        logits, p, lse = ctx.saved_tensors
        g = (logits - lse.unsqueeze(-1)).exp_().sub_(p)
        return g.mul_(grad.unsqueeze(-1)), None, None


def _relative_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, H] vectors vs [N, H] targets -> [N] squared errors over the targets' squared norms."""
    x, target = x.float(), target.float()
    return (x - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp(min=1e-12)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, V] . [N, V] -> [N] as a batched matmul, without an [N, V] product tensor."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).flatten()
