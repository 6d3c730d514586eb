"""How much CPU other processes took while an engine run was timed.

tokens/s and speedup are ratios of runs that may be measured minutes or (from the run cache)
days apart. A run timed while a training or another engine computed on the same cores reads
slow, and every speedup against it is wrong without any error: on this 2-core machine a
target-only run measured beside a training gave 17 tokens/s against 36-51 idle. Each run
records the busy CPU time of the whole machine minus its own process tree's over the timed
window, so results.json and report.md can say when a number was not measured on a quiet machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Above this many cores of other work, on average over the timed window, a run's tokens/s is
# flagged: well above the background noise of an idle box (~0.01-0.05 cores here).
BUSY_CORES = 0.25


@dataclass
class Snapshot:
    wall: float
    machine_busy: float  # CPU-seconds all cores spent outside idle / iowait since boot
    tree: float  # CPU-seconds of the root process and its descendants (live and reaped)


def snapshot(root: int | None = None) -> Snapshot | None:
    """None where psutil is missing (the vLLM runner always has it: vLLM needs it)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    # guest time is already counted in user on Linux; idle and iowait are not work
    skip = {"idle", "iowait", "guest", "guest_nice"}
    busy = sum(getattr(t, f) for f in t._fields if f not in skip)
    proc = psutil.Process(root or os.getpid())
    tree = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.NoSuchProcess:  # exited between listing and reading
            continue
        tree += c.user + c.system + c.children_user + c.children_system
    return Snapshot(time.monotonic(), busy, tree)


def other_cores(before: Snapshot | None, after: Snapshot | None) -> float | None:
    """Mean number of cores busy with processes outside the tree between the two snapshots."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    other = (after.machine_busy - before.machine_busy) - (after.tree - before.tree)
    return max(0.0, other) / (after.wall - before.wall)


def timing(before: Snapshot | None, after: Snapshot | None, started: float) -> dict:
    return {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "other_cpu_cores": other_cores(before, after), "cpu_count": os.cpu_count()}


def is_clean(timing: dict | None) -> bool | None:
    """False when other processes kept BUSY_CORES or more busy while the run was timed; None when
    the run (cached by a version that did not record it) does not say."""
    busy = (timing or {}).get("other_cpu_cores")
    return None if busy is None else busy < BUSY_CORES


def all_clean(flags) -> bool | None:
    """Over several runs' is_clean: False when any was contended, else None when any does not say."""
    flags = list(flags)
    return False if False in flags else None if None in flags else True
