"""Source config.json -> our SpeculatorConfig, per layout (rope spellings, norms, vocab, aux ids)."""

from __future__ import annotations

import torch

from speculators_kit.core.build import default_aux_layers, draft_config_for_target, target_config
from speculators_kit.core.config import SpeculatorConfig
from speculators_kit.core.errors import SpecKitError

LAYER_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "max_position_embeddings", "hidden_act", "attention_bias",
                "mlp_bias")


def rope_parameters(cfg: dict) -> dict:
    """Newer configs say rope_parameters; older ones rope_theta (+ rope_scaling)."""
    if cfg.get("rope_parameters"):
        return dict(cfg["rope_parameters"])
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if scaling:
        return {**scaling, "rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                "rope_theta": theta}
    return {"rope_type": "default", "rope_theta": theta}


def translate(layout: str, src: dict, mapped: dict[str, torch.Tensor], target_dir,
              provenance: dict) -> SpeculatorConfig:
    if layout in ("speculators", "ours"):
        return _from_speculators(src, target_dir, provenance)
    layers = _num_layers(mapped)
    tcfg = target_config(target_dir)
    if layout == "eagle3":
        vocab = int(src.get("draft_vocab_size") or mapped["lm_head.weight"].shape[0])
        aux = src.get("eagle_aux_hidden_state_layer_ids") or default_aux_layers(tcfg["num_hidden_layers"])
        base = draft_config_for_target(target_dir, "eagle3", layers, vocab, list(aux), 5, None, provenance)
        extra = {"norm_before_residual": False}  # SafeAILab keeps the un-normed hidden as residual
    else:
        base = draft_config_for_target(target_dir, "eagle", layers, None, None, 5, None, provenance)
        extra = {"fc_bias": "fc.bias" in mapped}
    layer = base.transformer_layer_config.model_dump()
    layer.update({k: src[k] for k in LAYER_FIELDS if src.get(k) is not None})
    layer["rope_parameters"] = rope_parameters(src)
    layer.pop("rope_theta", None)
    return _validated(base.model_dump(), {"transformer_layer_config": layer, **extra})


def _from_speculators(src: dict, target_dir, provenance: dict) -> SpeculatorConfig:
    kind = src.get("speculators_model_type")
    if kind not in ("eagle3", "eagle"):
        raise SpecKitError(f"speculators_model_type {kind!r} is not supported (eagle3, eagle)")
    layer = dict(src["transformer_layer_config"])
    for old in ("torch_dtype", "dtype", "architectures", "_attn_implementation", "transformers_version"):
        layer.pop(old, None)
    layer["rope_parameters"] = rope_parameters(layer)
    for old in ("rope_theta", "rope_scaling"):
        layer.pop(old, None)
    aux = src.get("eagle_aux_hidden_state_layer_ids")
    base = draft_config_for_target(target_dir, kind, layer.get("num_hidden_layers", 1),
                                   src.get("draft_vocab_size"), aux, _k(src), None, provenance)
    keep = ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output", "target_hidden_size")
    base_layer = base.transformer_layer_config.model_dump()
    return _validated(base.model_dump(), {"transformer_layer_config": {**base_layer, **layer},
                                          **{k: src[k] for k in keep if k in src}})


def _k(src: dict) -> int:
    methods = (src.get("speculators_config") or {}).get("proposal_methods") or [{}]
    return int(methods[0].get("speculative_tokens", 5))


def _num_layers(mapped) -> int:
    from speculators_kit.convert.layouts import num_layers

    n = num_layers(mapped)
    if n == 0:
        raise SpecKitError("the source has no decoder layer weights")
    return n


def _validated(data: dict, update: dict) -> SpeculatorConfig:
    data = {k: v for k, v in {**data, **update}.items() if v is not None or k in update}
    try:
        return SpeculatorConfig.model_validate(data)
    except Exception as err:
        raise SpecKitError(f"the converted config is invalid: {err}") from err
