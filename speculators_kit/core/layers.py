"""Decoder-layer building blocks for draft heads (Llama and Qwen3 flavours, dense or MoE MLP).

Parameter names follow HF/vLLM (`self_attn.q_proj`, `mlp.gate_proj`, ...) so a state dict
saves straight into the speculator format. Attention takes explicit extra keys so the same
module serves drafting (KV cache) and training-time test (diagonal keys of later steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speculators_kit.core.config import LayerConfig, MoESpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    """Default RoPE (rotate-half convention, as HF Llama/Qwen3)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, Dh/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # [B, 1, T, Dh]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: LayerConfig, input_size: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(input_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(input_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        if cfg.model_type == "qwen3":  # Qwen3 normalises q and k per head before RoPE
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, T, D_in] -> q [B, H, T, Dh], k/v [B, Hkv, T, Dh] with RoPE applied."""
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q, k, v, mask, diag_kv=()):
        """Scaled dot-product attention.

        q [B, H, T, Dh]; k, v [B, Hkv, S, Dh]; mask [B|1, 1, T, S] bool (True = may attend).
        diag_kv: (k_j, v_j) pairs [B, Hkv, T, Dh] that query t sees only at its own row t
        (the keys of later training-time-test steps, arXiv 2503.01840 section 3.3).
        Returns [B, T, H*Dh] projected by o_proj.
        """
        return self._project_out(self._context(q, k, v, mask, diag_kv))

    def attend_segments(self, q, k, v, segments, diag_kv=()):
        """Causal attention within each segment only (block-diagonal), as `attend` with
        T == S. segments[b]: (start, end) runs of row b; positions outside every run (padding)
        get zeros. Packed rows pay for their samples' attention, not for the whole row's."""
        seq = q.shape[2]
        rows = []
        for b, runs in enumerate(segments):
            pieces, at = [], 0
            for start, end in runs:
                if start > at:
                    pieces.append(q.new_zeros(1, q.shape[1], start - at, q.shape[3]))
                span = (slice(b, b + 1), slice(None), slice(start, end))
                causal = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).tril()
                diag = [(kj[span], vj[span]) for kj, vj in diag_kv]
                pieces.append(self._context(q[span], k[span], v[span], causal[None, None], diag))
                at = end
            if at < seq:
                pieces.append(q.new_zeros(1, q.shape[1], seq - at, q.shape[3]))
            rows.append(torch.cat(pieces, dim=2))
        return self._project_out(torch.cat(rows, dim=0))

    def _context(self, q, k, v, mask, diag_kv):
        """Attention-weighted values [B, H, T, Dh] (before o_proj)."""
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scale = self.head_dim ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, T, S]
        scores = scores.masked_fill(~mask, float("-inf"))
        extra = [(kj.repeat_interleave(groups, 1), vj.repeat_interleave(groups, 1)) for kj, vj in diag_kv]
        if not extra:
            return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
        diag = torch.stack([(q * kj).sum(-1) * scale for kj, _ in extra], dim=-1)  # [B,H,T,J]
        probs = torch.softmax(torch.cat([scores, diag], dim=-1).float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs[..., : scores.shape[-1]], v)
        for j, (_, vj) in enumerate(extra):
            out = out + probs[..., scores.shape[-1] + j, None] * vj
        return out

    def _project_out(self, context):
        bsz, _, seq, _ = context.shape
        return self.o_proj(context.transpose(1, 2).reshape(bsz, seq, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEMLP(nn.Module):
    """E SwiGLU experts with top-k routing (renormalised over the chosen k, as Mixtral/Qwen3-MoE).

    Draft-side MoE after Jakiro (arXiv 2502.06282): experts let one draft layer specialise per
    token type at the cost of one dense MLP per token. Names follow Qwen3-MoE (`gate`,
    `experts.N.*`). A dense loop over experts: drafts are small and this stays readable.
    """

    def __init__(self, hidden: int, intermediate: int, spec: MoESpec):
        super().__init__()
        self.top_k = spec.top_k  # <= num_experts: MoESpec refuses more
        self.gate = nn.Linear(hidden, spec.num_experts, bias=False)
        size = spec.intermediate_size or intermediate
        self.experts = nn.ModuleList(MLP(hidden, size) for _ in range(spec.num_experts))
        # one balance term per training forward (every TTT step runs this layer); the trainer
        # averages and clears them each batch
        self.balance_terms: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        router = torch.softmax(self.gate(flat).float(), dim=-1)
        weights, chosen = router.topk(self.top_k, dim=-1)  # [N, k]
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        if self.training and torch.is_grad_enabled():  # never while drafting (no one clears them)
            self.balance_terms.append(self._balance(router, chosen))
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        return out.view(shape)

    def _balance(self, router: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Switch-Transformer balance term, E * sum_e load_e * mean_prob_e: 1.0 when balanced."""
        load = torch.zeros_like(router[0]).index_add_(0, chosen.flatten(), torch.ones_like(
            chosen.flatten(), dtype=router.dtype)) / chosen.numel()
        return len(self.experts) * (load * router.mean(0)).sum()


def build_mlp(cfg: LayerConfig, moe: MoESpec) -> nn.Module:
    if moe.num_experts > 0:
        return MoEMLP(cfg.hidden_size, cfg.intermediate_size, moe)
    return MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)
