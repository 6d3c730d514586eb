"""Extensions of vLLM's speculators-format reader (its `SUPPORTED_SPECULATORS_TYPES` table):
an `eagle` entry for EAGLE-1/HASS drafts, and an `eagle3` entry that sends MoE drafts to our
architecture and every other draft to vLLM's own."""

from __future__ import annotations


def update_eagle(config_dict: dict, pre_trained_config: dict) -> None:
    """EAGLE-1 / HASS: fc over [embedding, final hidden], then Llama layers; the target's lm_head."""
    model_type = pre_trained_config.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"speculators_kit: EAGLE-1 drafts need a llama layer, got {model_type}")
    from speculators_kit.vllm_plugin import EAGLE_BIAS_ARCH

    bias = bool(config_dict.get("fc_bias"))
    pre_trained_config["architectures"] = [EAGLE_BIAS_ARCH if bias else "EagleLlamaForCausalLM"]


def wrap_eagle3(stock):
    def update_eagle3(config_dict: dict, pre_trained_config: dict) -> None:
        stock(config_dict=config_dict, pre_trained_config=pre_trained_config)
        moe = (config_dict.get("speculators_kit") or {}).get("moe") or {}
        if moe.get("num_experts", 0) > 0:
            from speculators_kit.vllm_plugin import MOE_ARCH

            if pre_trained_config.get("model_type", "llama") != "llama":
                raise ValueError("speculators_kit: MoE EAGLE-3 drafts need a llama layer")
            pre_trained_config["architectures"] = [MOE_ARCH]
            pre_trained_config["speckit_moe"] = dict(moe)
    update_eagle3.speckit = True
    return update_eagle3


def install() -> None:
    from vllm.transformers_utils.configs.speculators import algos

    table = algos.SUPPORTED_SPECULATORS_TYPES
    table.setdefault("eagle", update_eagle)
    if not getattr(table["eagle3"], "speckit", False):
        table["eagle3"] = wrap_eagle3(table["eagle3"])
