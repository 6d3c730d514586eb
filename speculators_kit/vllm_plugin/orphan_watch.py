"""An engine core whose front end died stops itself.

vLLM's engine core runs in a child of the process that made the `LLM` (speckit datagen, eval's
runner, `vllm serve`). When that process is SIGKILLed alone (the OOM killer, `kill -9 PID`), no
code of it runs to stop the engine, and vLLM 0.32's engine core does not watch its parent: it
and its worker stayed asleep as orphans, holding the target, the KV cache and ~400 MB of
/dev/shm until reboot (measured: 2.4 GB for a tiny target). Its workers already follow the
engine core out (vLLM's death pipe), so only the engine core needs watching.

A thread polls the parent's pid instead of PR_SET_PDEATHSIG, which fires when the *thread* that
started the child exits: an `LLM` made in a worker thread would lose its engine with the thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time

POLL_S = 1.0
GRACE_S = 60.0  # after SIGTERM, the engine's own shutdown; then SIGKILL
ENGINE_CORE = "EngineCore"  # vLLM's name for the process (EngineCore_DP<i> with data parallel)
logger = logging.getLogger("speculators_kit.vllm_plugin")
_watching: int | None = None  # the pid that started a watch: a forked child must start its own


def watch_if_engine_core() -> None:
    global _watching
    parent = multiprocessing.parent_process()
    if _watching == os.getpid() or parent is None \
            or not multiprocessing.current_process().name.startswith(ENGINE_CORE):
        return
    _watching = os.getpid()
    threading.Thread(target=_watch, args=(parent.pid,), name="speckit-orphan-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    logger.warning("vLLM's front end (pid %d) is gone; stopping its orphaned engine core (pid %d)",
                   parent_pid, os.getpid())
    _remove_socket_folder()
    os.kill(os.getpid(), signal.SIGTERM)  # vLLM's handler shuts the engine and its workers down
    time.sleep(GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _remove_socket_folder() -> None:
    """The dead front end's socket folder (vllm_env.private_ipc_dir), which its exit handler
    never removed; bound sockets work on without their files."""
    from speculators_kit.vllm_env import IPC_PREFIX

    folder = os.environ.get("VLLM_RPC_BASE_PATH", "")
    if os.path.basename(folder).startswith(IPC_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
