"""Source layouts, how to recognise them, and their key maps onto our weight names.

A key map is an ordered list of (source prefix, our prefix or None); None drops the tensor on
purpose (training-only copies of target weights). Anything no rule matches is an error: a
conversion never guesses and never invents a weight.
"""

from __future__ import annotations

import re

import torch

from speculators_kit.core.errors import SpecKitError

KEY_MAPS: dict[str, list[tuple[str, str | None]]] = {
    # SafeAILab EAGLE-3: one decoder layer called `midlayer`, fc over 3 aux features.
    "eagle3": [("midlayer.", "layers.0."), ("fc.", "fc."), ("norm.", "norm."), ("lm_head.", "lm_head."),
               ("d2t", "d2t"), ("t2d", "t2d"), ("embed_tokens.", "embed_tokens.")],
    # SafeAILab EAGLE-1/EAGLE-2 and HASS: fc over [embedding, feature] (with bias), Llama layers,
    # the first without input_layernorm; the target's lm_head predicts.
    "eagle": [("fc.", "fc."), ("layers.", "layers."), ("embed_tokens.", "embed_tokens.")],
    # vllm-project/speculators (any release): already our names; verifier_* are frozen target
    # copies some releases saved for training.
    "speculators": [("embed_tokens.", "embed_tokens."), ("fc.", "fc."), ("fc_norm.", "fc_norm."),
                    ("input_norm.", "input_norm."), ("layers.", "layers."), ("norm.", "norm."),
                    ("lm_head.", "lm_head."), ("d2t", "d2t"), ("t2d", "t2d"),
                    ("verifier_lm_head.", None), ("verifier_norm.", None)],
}
KEY_MAPS["hass"] = KEY_MAPS["eagle"]
KEY_MAPS["ours"] = KEY_MAPS["speculators"]


def detect(config: dict, state: dict[str, torch.Tensor]) -> str:
    """The source layout, from the config's markers and the weight names."""
    if "speculators_kit" in config and "speculators_config" in config:
        return "ours"
    if "speculators_config" in config or "speculators_model_type" in config:
        return "speculators"
    if any(k.startswith("midlayer.") for k in state):
        return "eagle3"
    if "fc.weight" in state and any(k.startswith("layers.") for k in state):
        return "eagle"
    raise SpecKitError("unknown checkpoint layout: no speculators_config in config.json, no "
                       "`midlayer.*` (EAGLE-3) and no `fc` + `layers.*` (EAGLE-1/HASS) weights; "
                       "pass --from explicitly if you know the layout")


def map_state_dict(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Pure: rename every tensor by the layout's key map; raise on any tensor no rule covers."""
    rules = KEY_MAPS[layout]
    out, unmapped = {}, []
    for name, tensor in state.items():
        for src, dst in rules:
            if name == src or name.startswith(src):
                if dst is not None:
                    out[dst + name[len(src):]] = tensor
                break
        else:
            unmapped.append(name)
    if unmapped:
        raise SpecKitError(f"{len(unmapped)} source weight(s) no {layout} rule maps: "
                           f"{', '.join(sorted(unmapped)[:5])}; is --from right?")
    return out


def num_layers(state: dict[str, torch.Tensor]) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def check_complete(mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                   shared: tuple[str, ...]) -> None:
    """Every weight our head needs must come from the source, with the right shape; `shared`
    weights (the target's embedding, EAGLE-1's lm_head) may come from the target instead."""
    missing = [k for k in expected if k not in mapped and k not in shared]
    if missing:
        raise SpecKitError(f"the source lacks {len(missing)} weight(s) the draft needs: "
                           f"{', '.join(sorted(missing)[:5])}")
    extra = [k for k in mapped if k not in expected]
    if extra:
        raise SpecKitError(f"source weight(s) with no place in the draft: {', '.join(sorted(extra)[:5])}")
    for k, t in mapped.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise SpecKitError(f"source weight {k} has shape {tuple(t.shape)}, the draft built from "
                               f"its config needs {tuple(expected[k].shape)}")
