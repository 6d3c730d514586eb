"""The module each process of `speckit train --nproc N` runs. Its first act is to take SIGUSR1,
speckit's stop request (train/stop.py): the signal's default is to end the process, and
importing torch and DeepSpeed takes seconds. What it takes here, the training reads."""

import atexit
import os
import signal
import sys

_asked: list[int] = []
signal.signal(signal.SIGUSR1, lambda signum, frame: _asked.append(signum))


def end(code: int) -> None:
    """Exit with `code` after Python's exit handlers, skipping the interpreter's teardown.

    The default process group outlives destroy_process_group (10 references to it remain, none
    held by an object Python's gc sees), so gloo's threads went down in that teardown, where a
    rank now and then aborted (SIGABRT, "terminate called without an active exception") after a
    finished run had saved everything: in 2 CI runs, 0 of 80 runs in a row here; the mechanism
    pytorch/pytorch#179291 describes."""
    atexit._run_exitfuncs()  # logging's flush, torch's compile-worker shutdown, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    from speculators_kit.train.recipe import main

    end(main(early=_asked))
