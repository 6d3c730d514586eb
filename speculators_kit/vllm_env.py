"""Environment defaults vLLM needs on a CPU machine (shared by every place that starts vLLM)."""

from __future__ import annotations

import os

from speculators_kit import cpu_runtime, engine_neighbours

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default asks for most of the RAM and fails
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # let vLLM use every core (it reserves one by default)
}


def set_cpu_defaults(offline: bool = True, warn: bool = True) -> None:
    """Set the CPU defaults (and HF_HUB_OFFLINE for offline jobs) unless the user set them,
    preload tcmalloc and Intel OpenMP into the engine processes vLLM spawns from here on, and
    (unless `warn` is False) warn when another engine already runs on the cores the next one will use."""
    for key, value in {**CPU_ENV, **({"HF_HUB_OFFLINE": "1"} if offline else {})}.items():
        os.environ.setdefault(key, value)
    cpu_runtime.preload(os.environ)
    if warn:
        engine_neighbours.warn_if_crowded()
