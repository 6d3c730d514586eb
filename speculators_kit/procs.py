"""Child processes that do not outlive `speckit`.

vLLM's engine core and workers (under `speckit eval`) and DeepSpeed's ranks (under `speckit
train --nproc N`) are grandchildren of speckit. `subprocess.call` kills only the child when
speckit is interrupted, which left the engine computing on as an orphan that slowed every
later measurement on the machine. Here the child leads its own process group and the whole
group goes, also when speckit itself is SIGKILLed (the OOM killer, a CI timeout, `kill -9`):
then no code of speckit's runs, so a small guard process watches it and kills the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def call(cmd: list[str], on_signal=None, **kwargs) -> int:
    """subprocess.call; on Ctrl-C, SIGTERM (the CLI turns it into SystemExit) or any error,
    and after the child exits, whatever is left of its process group is killed.
    on_signal(proc, signum): called on the first Ctrl-C or SIGTERM instead, to let the child
    stop by itself; a second one kills the group."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    # Its own session, so Ctrl-C in the terminal does not reach it (nor print its traceback).
    guard = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), str(proc.pid)],
                             start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        gently = contextlib.nullcontext() if on_signal is None else \
            first_signal((signal.SIGINT, signal.SIGTERM), lambda signum: on_signal(proc, signum))
        with gently:
            return proc.wait()
    finally:
        guard.kill()
        guard.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def first_signal(signals, handle):
    """While inside: the first of `signals` calls handle(signum), to stop gently; a second one
    raises KeyboardInterrupt, to stop at once."""
    before, seen = {s: signal.getsignal(s) for s in signals}, []

    def on_signal(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)
        handle(signum)

    for s in signals:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _guard(parent: int, group: int) -> None:
    """Kill the group once `parent` dies. Reparenting, not kill(parent, 0), tells: a killed
    speckit stays a zombie, which kill(pid, 0) still finds, until its own parent reaps it."""
    while os.getppid() == parent:
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    _guard(int(sys.argv[1]), int(sys.argv[2]))
