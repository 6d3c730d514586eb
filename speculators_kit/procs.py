"""Child processes that do not outlive `speckit`.

vLLM's engine core and workers (under `speckit eval`) and DeepSpeed's ranks (under `speckit
train --nproc N`) are grandchildren of speckit. `subprocess.call` kills only the child when
speckit is interrupted, which left the engine computing on as an orphan that slowed every
later measurement on the machine. Here the child leads its own process group and the whole
group goes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def call(cmd: list[str], **kwargs) -> int:
    """subprocess.call; on Ctrl-C, SIGTERM (the CLI turns it into SystemExit) or any error,
    and after the child exits, whatever is left of its process group is killed."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        return proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
