"""The module each process of `speckit train --nproc N` runs. Its first act is to take SIGUSR1,
speckit's stop request (train/stop.py): the signal's default is to end the process, and
importing torch and DeepSpeed takes seconds. What it takes here, the training reads."""

import signal
import sys

_asked: list[int] = []
signal.signal(signal.SIGUSR1, lambda signum, frame: _asked.append(signum))

if __name__ == "__main__":
    from speculators_kit.train.recipe import main

    sys.exit(main(early=_asked))
