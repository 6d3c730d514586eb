"""Build an untrained draft for a target: its config, and random or target-derived weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from speculators_kit.core.config import FORMAT_VERSION, MoESpec, SpeculatorConfig, one_line
from speculators_kit.core.draft import DraftHead
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.fingerprint import target_fingerprint
from speculators_kit.core.format import load_target_tensors, shared_target_weight

LAYER_KEYS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "rms_norm_eps", "vocab_size", "max_position_embeddings", "hidden_act", "attention_bias",
    "mlp_bias", "rope_parameters", "rope_theta",
)
INITS = ("random", "target-last-layer")
ARCH_ALIASES = {"eagle3": ("eagle3", 0), "eagle": ("eagle", 0), "hass": ("eagle", 0), "eagle3-moe": ("eagle3", 4)}


def default_aux_layers(num_layers: int) -> list[int]:
    """EAGLE-3's default aux layers (2, L//2, L-3), de-duplicated for tiny targets."""
    ids = sorted({min(2, num_layers - 1), num_layers // 2, max(num_layers - 3, 0)})
    return ids


def target_config(target_dir: Path) -> dict[str, Any]:
    cfg = json.loads((Path(target_dir) / "config.json").read_text())
    return cfg.get("text_config", cfg)


def draft_config_for_target(
    target_dir: Path, arch: str = "eagle3", num_layers: int = 1, draft_vocab_size: int | None = None,
    aux_layer_ids: list[int] | None = None, k: int = 5, moe: MoESpec | None = None,
    provenance: dict | None = None, norms: dict[str, bool] | None = None,
) -> SpeculatorConfig:
    """norms: EAGLE-3 norm flags (norm_before_fc, fc_norm, norm_before_residual, norm_output)."""
    if arch not in ARCH_ALIASES:
        raise SpecKitError(f"unknown draft arch {arch!r}; known: {', '.join(ARCH_ALIASES)}")
    kind, default_experts = ARCH_ALIASES[arch]
    tcfg = target_config(target_dir)
    model_type = tcfg.get("model_type", "llama")
    layer_type = "qwen3" if model_type.startswith("qwen3") else "llama"
    layer = {key: tcfg[key] for key in LAYER_KEYS if tcfg.get(key) is not None}
    if "moe_intermediate_size" in tcfg and "intermediate_size" not in layer:
        layer["intermediate_size"] = tcfg["moe_intermediate_size"]
    layer.update(model_type=layer_type, num_hidden_layers=num_layers)
    if moe is None:
        moe = MoESpec(num_experts=default_experts)
    vocab = tcfg["vocab_size"]
    data = {
        "speculators_model_type": kind,
        "architectures": ["Eagle3Speculator" if kind == "eagle3" else "EagleSpeculator"],
        "speculators_config": {
            "algorithm": kind,
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": str(Path(target_dir).resolve()),
                         "architectures": tcfg.get("architectures", [])},
        },
        "transformer_layer_config": layer,
        "draft_vocab_size": vocab if draft_vocab_size is None else draft_vocab_size,
        "target_hidden_size": tcfg["hidden_size"],
        "norm_before_residual": False,
        "speculators_kit": {
            "format_version": FORMAT_VERSION,
            "target_fingerprint": target_fingerprint(target_dir),
            "provenance": provenance or {},
            "moe": moe.model_dump(),
        },
    }
    if kind == "eagle3":
        layers = tcfg["num_hidden_layers"]
        aux = aux_layer_ids or default_aux_layers(layers)
        if max(aux) >= layers:
            raise SpecKitError(f"aux layer {max(aux)} does not exist: the target has {layers} layers "
                               f"(0..{layers - 1})")
        data["eagle_aux_hidden_state_layer_ids"] = aux
        # vLLM 0.32 sizes fc from this layer-config key (it assumes 3 aux layers without it).
        layer["num_aux_hidden_states"] = len(aux)
        data.update(norms or {})
    else:
        data["fc_bias"] = False
    try:
        return SpeculatorConfig.model_validate(data)
    except ValidationError as err:
        raise SpecKitError(f"cannot build a draft config for {target_dir}: {one_line(err)}") from err


def init_draft(cfg: SpeculatorConfig, target_dir: Path, init: str = "random", seed: int = 0) -> DraftHead:
    if init not in INITS:
        raise SpecKitError(f"unknown --init {init!r}; known: {', '.join(INITS)}")
    torch.manual_seed(seed)
    head = DraftHead(cfg)
    std = 0.02
    for name, p in head.named_parameters():
        if name.endswith("norm.weight") or ".weight" not in name + "." or p.dim() == 1:
            continue
        torch.nn.init.normal_(p, std=std)
    with torch.no_grad():
        head.embed_tokens.weight.copy_(_required(target_dir, "embed_tokens.weight"))
        # Both heads start from the target's output layer (EAGLE-3: its first rows, until a
        # draft vocabulary picks the rows); training keeps it frozen by default.
        head.lm_head.weight.copy_(_required(target_dir, "lm_head.weight")[: cfg.draft_vocab_size])
        if init == "target-last-layer":
            _copy_target_layers(head, cfg, target_dir)
    return head


def _required(target_dir, name):
    t = shared_target_weight(target_dir, name)
    if t is None:
        raise SpecKitError(f"target {target_dir} has no tensor for {name}")
    return t


def _copy_target_layers(head: DraftHead, cfg: SpeculatorConfig, target_dir: Path) -> None:
    """Draft layer i <- target layer L-N+i; the EAGLE-3 fc picks the deepest aux feature, the
    first layer's q/k/v read only the hidden half, and norm/lm_head come from the target."""
    tcfg = target_config(target_dir)
    n_target = tcfg["num_hidden_layers"]
    n_draft = cfg.layer.num_hidden_layers
    hidden = cfg.layer.hidden_size
    for i, layer in enumerate(head.layers):
        src = f"model.layers.{n_target - n_draft + i}."
        names = [n for n, _ in layer.named_parameters()]
        wanted = tuple(src + n for n in names) + (src + "input_layernorm.weight",)
        found = load_target_tensors(target_dir, wanted)
        params = dict(layer.named_parameters())
        for name, p in params.items():
            t = found.get(src + name)
            if t is None:
                continue
            if p.shape == t.shape:
                p.copy_(t)
            elif p.shape[1] == 2 * t.shape[1]:  # EAGLE-3 first layer: [embedding | hidden]
                p.zero_()
                p[:, hidden:].copy_(t)
        if getattr(layer, "eagle3_first", False):
            layer.hidden_norm.weight.copy_(found[src + "input_layernorm.weight"])
    if cfg.arch == "eagle3":
        head.fc.weight.zero_()
        n_aux = len(cfg.eagle_aux_hidden_state_layer_ids)
        deepest = max(range(n_aux), key=lambda j: cfg.eagle_aux_hidden_state_layer_ids[j])
        head.fc.weight[:, deepest * hidden:(deepest + 1) * hidden].copy_(torch.eye(hidden))
        norm = load_target_tensors(target_dir, ("model.norm.weight",)).get("model.norm.weight")
        if norm is not None:
            head.norm.weight.copy_(norm)
    else:
        head.fc.weight.zero_()
        head.fc.weight[:, hidden:].copy_(torch.eye(hidden))
