"""Tiny source checkpoints in each research layout, built here (no downloads)."""

import json

import torch
from safetensors.torch import save_file

H, HEADS, KV, D, I, V = 64, 4, 2, 32, 128, 256


def _layer(prefix, g, first_eagle3=False, input_norm=True):
    inp = 2 * H if first_eagle3 else H
    w = {f"{prefix}self_attn.q_proj.weight": (HEADS * D, inp), f"{prefix}self_attn.k_proj.weight": (KV * D, inp),
         f"{prefix}self_attn.v_proj.weight": (KV * D, inp), f"{prefix}self_attn.o_proj.weight": (H, HEADS * D),
         f"{prefix}mlp.gate_proj.weight": (I, H), f"{prefix}mlp.up_proj.weight": (I, H),
         f"{prefix}mlp.down_proj.weight": (H, I)}
    out = {k: torch.randn(*shape, generator=g) * 0.05 for k, shape in w.items()}
    norms = ["post_attention_layernorm"] + (["input_layernorm"] if input_norm else [])
    norms += ["hidden_norm"] if first_eagle3 else []
    for n in norms:
        out[f"{prefix}{n}.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
    return out


def llama_config(**kw):
    return {"hidden_size": H, "intermediate_size": I, "num_attention_heads": HEADS, "num_key_value_heads": KV,
            "head_dim": D, "rms_norm_eps": 1e-6, "vocab_size": V, "rope_theta": 10000.0,
            "max_position_embeddings": 512, **kw}


def eagle3_source(path, draft_vocab=96, seed=0):
    """SafeAILab EAGLE-3: `midlayer.*`, fc over 3 aux features, d2t offsets / t2d mask."""
    g = torch.Generator().manual_seed(seed)
    w = _layer("midlayer.", g, first_eagle3=True)
    keep = torch.sort(torch.randperm(V, generator=g)[:draft_vocab]).values
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[keep] = True
    w.update({"fc.weight": torch.randn(H, 3 * H, generator=g) * 0.05, "norm.weight": 1 + 0.1 * torch.randn(H, generator=g),
              "lm_head.weight": torch.randn(draft_vocab, H, generator=g) * 0.05,
              "d2t": keep - torch.arange(draft_vocab), "t2d": t2d})
    path.mkdir(parents=True, exist_ok=True)
    cfg = llama_config(architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=draft_vocab,
                       eagle_aux_hidden_state_layer_ids=[1, 2, 3], num_hidden_layers=1)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(w, str(path / "model.safetensors"))
    return w


def eagle1_source(path, layers=1, seed=0):
    """SafeAILab EAGLE-1/2 (and HASS): fc with bias over [emb, feature]; layer 0 has no input norm.
    Saved as pytorch_model.bin, as those releases were."""
    g = torch.Generator().manual_seed(seed)
    w = {"fc.weight": torch.randn(H, 2 * H, generator=g) * 0.05, "fc.bias": torch.randn(H, generator=g) * 0.05}
    for i in range(layers):
        w.update(_layer(f"layers.{i}.", g, input_norm=i > 0))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(llama_config(architectures=["LlamaForCausalLM"],
                                                              num_hidden_layers=layers, bias=True)))
    torch.save(w, str(path / "pytorch_model.bin"))
    return w
