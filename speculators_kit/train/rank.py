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

    Twice in CI (0 of 80 runs in a row here) a rank aborted in that teardown after a finished
    run had saved everything: SIGABRT, "terminate called without an active exception", from
    gloo's threads (pytorch/pytorch#179291), as the process group had outlived
    destroy_process_group. ds.init_distributed now lets the group go; as that cause was found
    by measuring, not by seeing the abort go away, a finished rank does not run that teardown."""
    atexit._run_exitfuncs()  # logging's flush, torch's compile-worker shutdown, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    from speculators_kit.train.recipe import main

    end(main(early=_asked))
