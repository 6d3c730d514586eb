"""`capture.model_dtype: auto`: the target's compute dtype for capture on this machine.

bf16 only where the hardware computes in it: on a CPU without bf16 instructions it is emulated
and slower than fp32, while with AMX it captured 2.28x faster and trained drafts as good
(benchmarks/results/capture_model_dtype.*).
"""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no flags, so float32
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def resolve_model_dtype(name: str, flags: set[str] | None = None, cuda: bool | None = None) -> str:
    if name != "auto":
        return name
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if cuda or any(f in flags for f in BF16_CPU_FLAGS) else "float32"
