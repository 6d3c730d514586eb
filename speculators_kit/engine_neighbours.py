"""Other vLLM engines on the cores a new engine is about to use.

vLLM's CPU backend pins each engine's threads itself (VLLM_CPU_OMP_THREADS_BIND=auto): its
worker thread to the first allowed core and its OpenMP threads to the rest. Two engines started
on one machine get the same pins, so they cannot move apart and compete for the same cores:
here a batch-1 eval started beside a datagen's capture decoded at 0.67x its speed alone, and
once a test's engine got 2 s of CPU in 9 minutes and looked hung. Nothing in vLLM says so, so
speckit warns before it starts one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from speculators_kit.eval.cpu_share import BUSY_CORES  # above the noise of an idle engine

ENGINE_PREFIX = "VLLM::"  # the process titles vLLM gives its engine processes (comm, 15 chars at most)
WORKER = ENGINE_PREFIX + "Worker"  # the model worker, whose threads vLLM pins


def cpus_of(pid: int) -> set[int]:
    """The union of the CPUs the threads of pid may run on (empty when it is gone)."""
    cpus = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("Cpus_allowed_list:"))
        except (OSError, StopIteration):
            continue
        cpus |= parse_cpu_list(line.split(":", 1)[1])
    return cpus


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's and VLLM_CPU_OMP_THREADS_BIND's list syntax)."""
    cpus = set()
    for part in text.replace("|", ",").split(","):
        if part.strip():
            lo, _, hi = part.strip().partition("-")
            cpus |= set(range(int(lo), int(hi or lo) + 1))
    return cpus


def planned_cpus() -> set[int]:
    """The cores an engine started from this process will use."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    return os.sched_getaffinity(0) if bind in ("auto", "nobind") else parse_cpu_list(bind)


def neighbours() -> list[dict]:
    """vLLM workers outside this process's tree whose threads may run on the cores its engine
    will use: pid, cores shared, owner (the command that started the engine), cores busy now."""
    import psutil

    me = os.getpid()
    mine = planned_cpus()
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if not (proc.info["name"] or "").startswith(WORKER) or _descends_from(proc, me):
                continue
            shared = cpus_of(proc.pid) & mine
            if shared:
                found.append({"pid": proc.pid, "cores": sorted(shared), "owner": _owner(proc)})
        except psutil.Error:  # exited while being read
            continue
    for entry, busy in zip(found, _busy([e["pid"] for e in found])):
        entry["busy_cores"] = busy
    return found


def warn_if_crowded(stream=None) -> list[dict]:
    """Print one warning naming every engine found by `neighbours` (Linux, CPU builds of vLLM
    or torch: a GPU engine does not pin cores); returns them."""
    from speculators_kit.cpu_runtime import cpu_build

    if not sys.platform.startswith("linux") or not cpu_build():
        return []
    found = neighbours()
    if found:
        by_owner = {}
        for e in found:
            state = "busy" if e["busy_cores"] >= BUSY_CORES else "idle"
            by_owner.setdefault(e["owner"], []).append(f"pid {e['pid']} (cores {_ranges(e['cores'])}, {state})")
        others = "; ".join(f"`{owner}`: {', '.join(workers)}" for owner, workers in by_owner.items())
        print(f"speckit: warning: vLLM engines already run on the cores this one will use ({others}). "
              "vLLM pins each CPU engine's threads to cores itself, so the engines share those cores "
              "and cannot move apart: each runs slower (one may stall), and times measured "
              "meanwhile are not this machine's. Wait for them or stop them; with cores to spare, "
              "give each job its own with VLLM_CPU_OMP_THREADS_BIND=<cores> (e.g. 0-3 and 4-7).",
              file=stream or sys.stderr, flush=True)
    return found


def _descends_from(proc, root: int) -> bool:
    return proc.pid == root or any(p.pid == root for p in proc.parents())


def _owner(proc) -> str:
    """The command line of the nearest ancestor that is not one of vLLM's engine processes."""
    for p in proc.parents():
        if not p.name().startswith(ENGINE_PREFIX):
            argv = p.cmdline()
            if "speculators_kit.cli" in argv:  # speckit re-executes itself as python -m ...
                argv = ["speckit", *argv[argv.index("speculators_kit.cli") + 1:]]
            cmd = " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else p.name()
            return cmd if len(cmd) <= 120 else cmd[:117] + "..."
    return "?"


def _busy(pids: list[int], window: float = 0.3) -> list[float]:
    """Cores each pid kept busy over a short window (0 for one that exited)."""
    import psutil

    def cpu(pid):
        try:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return None

    if not pids:
        return []
    before = [cpu(p) for p in pids]
    time.sleep(window)
    after = [cpu(p) for p in pids]
    return [0.0 if a is None or b is None else max(0.0, b - a) / window for a, b in zip(before, after)]


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
