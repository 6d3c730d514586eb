"""Draft heads: EAGLE-3 (arXiv 2503.01840), EAGLE-1 / HASS (arXiv 2401.15077, 2408.15766),
each with 1..N Llama- or Qwen3-style decoder layers and an optional MoE MLP.

The computation mirrors vLLM 0.32's `llama_eagle3.py` / `llama_eagle.py` exactly (same
norms, same residual wiring, same hidden state fed back between draft steps), so a head
trained here drafts the same tokens when vLLM serves it.

Conventions: the draft at position t sees the token x[t+1] and the target hidden state at t
(the one that produced x[t+1]); it predicts x[t+2]. RoPE uses position t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speculators_kit.core.config import SpeculatorConfig
from speculators_kit.core.layers import Attention, RMSNorm, Rotary, build_mlp


class DraftLayer(nn.Module):
    def __init__(self, cfg: SpeculatorConfig, index: int):
        super().__init__()
        layer = cfg.layer
        hidden = layer.hidden_size
        self.eagle3_first = cfg.arch == "eagle3" and index == 0
        self.norm_before_residual = cfg.norm_before_residual
        # EAGLE-3's first layer attends over [norm(embedding), norm(fused hidden)] = 2H.
        self.self_attn = Attention(layer, 2 * hidden if self.eagle3_first else hidden)
        self.mlp = build_mlp(layer, cfg.speculators_kit.moe)
        # EAGLE-1's first layer has no input norm: fc already mixed embedding and feature.
        if cfg.arch == "eagle3" or index > 0:
            self.input_layernorm = RMSNorm(hidden, layer.rms_norm_eps)
        else:
            self.input_layernorm = None
        if self.eagle3_first:
            self.hidden_norm = RMSNorm(hidden, layer.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, layer.rms_norm_eps)

    def forward(self, emb, hidden, residual, cos, sin, attend):
        """Returns (mlp_out, residual) with the residual not yet added (vLLM convention)."""
        if self.eagle3_first:
            normed = self.hidden_norm(hidden)
            residual = normed if self.norm_before_residual else hidden
            x = torch.cat([self.input_layernorm(emb), normed], dim=-1)
        elif residual is None:  # EAGLE-1 first layer
            residual, x = hidden, hidden
        else:
            residual = hidden + residual
            x = self.input_layernorm(residual)
        q, k, v = self.self_attn.project(x, cos, sin)
        residual = attend(self.self_attn, q, k, v) + residual
        return self.mlp(self.post_attention_layernorm(residual)), residual


@dataclass
class DraftCache:
    """Per-layer KV cache for token-by-token drafting. k/v: [B, Hkv, L, Dh]."""

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def truncate(self, length: int) -> None:
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]


class DraftHead(nn.Module):
    def __init__(self, cfg: SpeculatorConfig):
        super().__init__()
        self.config = cfg
        layer = cfg.layer
        hidden = layer.hidden_size
        target_hidden = cfg.target_hidden_size or hidden
        self.embed_tokens = nn.Embedding(layer.vocab_size, hidden)
        if cfg.arch == "eagle3":
            n_aux = len(cfg.eagle_aux_hidden_state_layer_ids)
            self.input_norm = RMSNorm(cfg.fc_input_size, layer.rms_norm_eps) if cfg.norm_before_fc else None
            self.fc_norm = (
                nn.ModuleList(RMSNorm(target_hidden, layer.rms_norm_eps) for _ in range(n_aux))
                if cfg.fc_norm else None
            )
            self.norm = RMSNorm(hidden, layer.rms_norm_eps)
        self.fc = nn.Linear(cfg.fc_input_size, hidden, bias=cfg.fc_bias)
        self.layers = nn.ModuleList(DraftLayer(cfg, i) for i in range(layer.num_hidden_layers))
        self.lm_head = nn.Linear(hidden, cfg.draft_vocab_size, bias=False)
        self.rotary = Rotary(layer.head_dim, layer.rope_theta_value)
        reduced = cfg.draft_vocab_size != layer.vocab_size
        # d2t holds offsets: target_id = draft_id + d2t[draft_id] (vLLM's convention).
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long) if reduced else None)
        self.register_buffer("t2d", torch.zeros(layer.vocab_size, dtype=torch.bool) if reduced else None)

    # ---- inputs -------------------------------------------------------------------------
    def fuse(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """Target features -> the draft's hidden input. [.., fc_in] -> [.., H] for EAGLE-3.

        EAGLE-3: the concatenated aux hidden states go through (norms and) fc. EAGLE-1: the
        target's final (normed) hidden state is used as is; fc mixes it with the embedding.
        """
        if self.config.arch != "eagle3":
            return target_hidden
        x = target_hidden
        if self.input_norm is not None:
            x = self.input_norm(x)
        if self.fc_norm is not None:
            chunks = x.chunk(len(self.fc_norm), dim=-1)
            x = torch.cat([norm(c) for norm, c in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(x)

    def _decode(self, input_ids, hidden, positions, attend_for):
        """Run the layers. hidden: fused [B, T, H]. Returns (logit_hidden, next_hidden)."""
        emb = self.embed_tokens(input_ids)
        if self.config.arch != "eagle3":
            hidden = self.fc(torch.cat([emb, hidden], dim=-1))
        cos, sin = self.rotary.cos_sin(positions, hidden.dtype)
        residual = None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(emb, hidden, residual, cos, sin, attend_for(i))
        prenorm = hidden + residual
        if self.config.arch != "eagle3":
            return prenorm, prenorm  # EAGLE-1 predicts the target's (normed) feature
        normed = self.norm(prenorm)
        return normed, (normed if self.config.norm_output else prenorm)

    # ---- drafting (KV cache) --------------------------------------------------------------
    def step(self, input_ids, hidden, positions, cache: DraftCache):
        """Extend the cache by T tokens. input_ids [B, T]; hidden fused [B, T, H]; positions [B, T].
        Each new token sees every cached token and the new ones before it."""
        past = cache.length
        seq = input_ids.shape[1]
        mask = torch.ones(seq, past + seq, dtype=torch.bool, device=input_ids.device)
        mask[:, past:] = torch.tril(mask[:, past:])

        def attend_for(i):
            def attend(attn, q, k, v):
                if i < len(cache.keys):
                    k = torch.cat([cache.keys[i], k], dim=2)
                    v = torch.cat([cache.values[i], v], dim=2)
                    cache.keys[i], cache.values[i] = k, v
                else:
                    cache.keys.append(k)
                    cache.values.append(v)
                return attn.attend(q, k, v, mask[None, None])
            return attend

        return self._decode(input_ids, hidden, positions, attend_for)

    def compute_logits(self, logit_hidden: torch.Tensor) -> torch.Tensor:
        """[.., H] -> draft-vocab logits [.., Vd]."""
        return self.lm_head(logit_hidden)

    def to_target_vocab(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """[.., Vd] -> [.., V], -inf on target tokens the draft cannot propose."""
        if self.d2t is None:
            return draft_logits
        vocab = self.config.layer.vocab_size
        out = draft_logits.new_full((*draft_logits.shape[:-1], vocab), float("-inf"))
        ids = torch.arange(self.config.draft_vocab_size, device=draft_logits.device) + self.d2t
        out[..., ids] = draft_logits
        return out

    # ---- training (teacher forced, training-time test) --------------------------------------
    def forward_train(self, input_ids, target_hidden, ttt_steps: int = 1, attention_mask=None,
                      positions=None, doc_ids=None, logits: bool = True, rows=None):
        """Unrolled training forward.

        input_ids [B, T]: x[t+1] aligned with target_hidden[:, t]; target_hidden [B, T, fc_in].
        Step j (0-based) feeds the step j-1 outputs back; position t at step j sees token
        x[t+1+j] (zero past the end) and predicts x[t+2+j]. Its query attends causally to the
        step-0 keys and to its own row's keys of steps 1..j: exactly what a j+1-long draft
        chain started at t sees at inference. attention_mask [B, T] masks padding keys.
        Packed rows: doc_ids [B, T] (-1: padding; replaces attention_mask) keep each sample's
        queries to its own keys and positions [B, T] restart RoPE at each sample.
        Returns a list of ttt_steps logits tensors [B, T, Vd], or with logits=False the hidden
        states [B, T, H] they come from (a caller that scores a subset of positions projects
        only those: the lm_head is the largest matmul of a training step).
        rows: per step, None or the [B, T] bool positions whose outputs the caller reads; a
        step > 0 then runs its layers on those only (zeros elsewhere). Step 0 runs everywhere:
        its keys serve every query. A step's rows must hold the next step's (they feed them).
        """
        bsz, seq = input_ids.shape
        base_pos = positions
        if base_pos is None:
            base_pos = torch.arange(seq, device=input_ids.device).expand(bsz, seq)
        segments = causal = None
        if doc_ids is not None:
            segments = document_runs(doc_ids)
        else:
            causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device))[None, None]
            if attention_mask is not None:
                causal = causal & attention_mask.bool()[:, None, None, :]
        step0_kv: list = []
        diag_kv: list = [[] for _ in self.layers]
        hidden = self.fuse(target_hidden)
        outputs = []
        keeps = _step_rows(rows, ttt_steps)
        for step in range(ttt_steps):
            ids = input_ids if step == 0 else torch.nn.functional.pad(input_ids[:, step:], (0, step))
            keep = keeps[step]

            def attend_for(i, step=step, keep=keep):
                def attend(attn, q, k, v):
                    if keep is not None:  # the attention runs full size: keys at every position
                        q, k, v = (_from_rows(x.transpose(1, 2), keep).transpose(1, 2) for x in (q, k, v))
                    if step == 0:
                        step0_kv.append((k, v))
                    else:
                        diag_kv[i].append((k, v))
                    k0, v0 = step0_kv[i]
                    if segments is not None:
                        out = attn.attend_segments(q, k0, v0, segments, diag_kv=diag_kv[i])
                    else:
                        out = attn.attend(q, k0, v0, causal, diag_kv=diag_kv[i])
                    return out if keep is None else out[keep][None]
                return attend

            if keep is None:
                logit_hidden, hidden = self._decode(ids, hidden, base_pos + step, attend_for)
            else:  # [1, N] rows through the projections and MLPs, which cost the most
                logit_hidden, hidden = (_from_rows(x, keep) for x in self._decode(
                    ids[keep][None], hidden[keep][None], (base_pos + step)[keep][None], attend_for))
            outputs.append(self.compute_logits(logit_hidden) if logits else logit_hidden)
        return outputs


def _step_rows(rows, steps: int) -> list:
    """Per step the [B, T] rows to compute (None: all); checks each holds the next step's."""
    keeps = [None] * steps if rows is None else [None, *rows[1:steps]]
    for step in range(1, steps - 1):
        now, later = keeps[step], keeps[step + 1]
        if now is not None and (later is None or (later & ~now).any()):
            raise ValueError(f"forward_train rows: step {step + 1}'s rows must be a subset of step {step}'s")
    return keeps


def _from_rows(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[1, N, ...] values of the N True positions of keep [B, T] -> [B, T, ...], zeros elsewhere."""
    full = x.new_zeros(*keep.shape, *x.shape[2:])
    full[keep] = x[0]
    return full


def document_runs(doc_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[B, T] sample ids (-1 = padding) -> per row, the (start, end) runs of each sample."""
    runs = []
    for row in doc_ids.tolist():
        row_runs, start = [], 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] != row[start]:
                if row[start] >= 0:
                    row_runs.append((start, t))
                start = t
        runs.append(row_runs)
    return runs
