"""Environment defaults vLLM needs on a CPU machine, and a folder of its own for its sockets
(shared by every place that starts vLLM)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from speculators_kit import cpu_runtime, engine_neighbours

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default asks for most of the RAM and fails
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # let vLLM use every core (it reserves one by default)
}


def set_cpu_defaults(offline: bool = True, warn: bool = True) -> None:
    """Set the CPU defaults (and HF_HUB_OFFLINE for offline jobs) unless the user set them,
    preload tcmalloc and Intel OpenMP into the engine processes vLLM spawns from here on, and
    (unless `warn` is False) warn when another engine already runs on the cores the next one will use.
    Also gives the engines a socket folder of this process's own (private_ipc_dir)."""
    for key, value in {**CPU_ENV, **({"HF_HUB_OFFLINE": "1"} if offline else {})}.items():
        os.environ.setdefault(key, value)
    cpu_runtime.preload(os.environ)
    private_ipc_dir()
    if warn:
        engine_neighbours.warn_if_crowded()


SUN_PATH_MAX = 107  # bytes of a unix socket path (sockaddr_un.sun_path, less its NUL)
IPC_PREFIX = "speckit-ipc-"  # + 8 random characters from mkdtemp
_SOCKET_NAME = len("/") + 36  # what vLLM appends to the folder: "/" + a uuid4


def private_ipc_dir() -> None:
    """vLLM 0.32 binds its ZMQ sockets as VLLM_RPC_BASE_PATH/<uuid> (default /tmp) and leaves
    them there: 7 files per engine start, thousands in /tmp after a day of runs here. Unless the
    user chose the folder, this process's engines get one of their own, removed when it exits
    (the engine processes inherit the setting; a child of this one leaves it to this one)."""
    if "VLLM_RPC_BASE_PATH" in os.environ:
        return
    parent = ipc_parent()
    if parent is None:
        return
    path = tempfile.mkdtemp(prefix=IPC_PREFIX, dir=parent)
    os.environ["VLLM_RPC_BASE_PATH"] = path
    atexit.register(_remove_in_creator, path, os.getpid())


def _remove_in_creator(path: str, creator: int) -> None:
    if os.getpid() == creator:  # a forked child that exits normally runs them too
        shutil.rmtree(path, ignore_errors=True)


def ipc_parent() -> str | None:
    """TMPDIR, or /tmp when TMPDIR is too long for a socket path in a folder of ours (a job
    scheduler's TMPDIR often is: vLLM itself fails there, binding in TMPDIR, once it exceeds 70
    characters); None: neither fits, and vLLM keeps its own choice."""
    for parent in (tempfile.gettempdir(), "/tmp"):
        fits = len(os.fsencode(parent)) + 1 + len(IPC_PREFIX) + 8 + _SOCKET_NAME <= SUN_PATH_MAX
        if fits and os.access(parent, os.W_OK | os.X_OK):
            return parent
    return None
