"""Reference forwards of the source architectures, in the sources' own weight names, written
from the EAGLE papers and SafeAILab's model code (not from our heads): what `--validate` and the
tests compare a converted head against. Full-sequence, causal, default RoPE, fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, theta: float):
    """x [heads, T, d]: rotate-half RoPE at positions 0..T-1."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


def _attention(x, w, p, cfg):
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    T = x.shape[0]
    q = (x @ w[p + "q_proj.weight"].T).view(T, heads, d).transpose(0, 1)
    k = (x @ w[p + "k_proj.weight"].T).view(T, kv, d).transpose(0, 1)
    v = (x @ w[p + "v_proj.weight"].T).view(T, kv, d).transpose(0, 1)
    q, k = _rope(q, cfg["rope_theta"]), _rope(k, cfg["rope_theta"])
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    scores = (q @ k.transpose(1, 2)) / d**0.5
    scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, heads * d)
    return out @ w[p + "o_proj.weight"].T


def _mlp(x, w, p):
    return (F.silu(x @ w[p + "gate_proj.weight"].T) * (x @ w[p + "up_proj.weight"].T)) @ w[p + "down_proj.weight"].T


def eagle3_logits(w: dict, cfg: dict, embed: torch.Tensor, input_ids, aux_hidden) -> torch.Tensor:
    """SafeAILab EAGLE-3: fc(aux) -> midlayer([norm(emb), norm(h)]) with the un-normed h as
    residual -> norm -> lm_head (draft vocab). aux_hidden [T, n_aux * H]."""
    eps = cfg["rms_norm_eps"]
    h = aux_hidden @ w["fc.weight"].T
    x = torch.cat([_rms(embed[input_ids], w["midlayer.input_layernorm.weight"], eps),
                   _rms(h, w["midlayer.hidden_norm.weight"], eps)], -1)
    h = h + _attention(x, w, "midlayer.self_attn.", cfg)
    h = h + _mlp(_rms(h, w["midlayer.post_attention_layernorm.weight"], eps), w, "midlayer.mlp.")
    return _rms(h, w["norm.weight"], eps) @ w["lm_head.weight"].T


def eagle1_logits(w: dict, cfg: dict, embed, lm_head, input_ids, feature) -> torch.Tensor:
    """EAGLE-1/HASS: fc([emb, feature]) (+bias) -> Llama layers (layer 0 without input norm) ->
    the target's lm_head on the predicted feature. feature [T, H]."""
    eps = cfg["rms_norm_eps"]
    x = torch.cat([embed[input_ids], feature], -1) @ w["fc.weight"].T
    if "fc.bias" in w:
        x = x + w["fc.bias"]
    n = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("layers."))
    for i in range(n):
        p = f"layers.{i}."
        y = x if i == 0 else _rms(x, w[p + "input_layernorm.weight"], eps)
        x = x + _attention(y, w, p + "self_attn.", cfg)
        x = x + _mlp(_rms(x, w[p + "post_attention_layernorm.weight"], eps), w, p + "mlp.")
    return x @ lm_head.T
