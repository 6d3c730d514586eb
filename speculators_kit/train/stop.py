"""Ctrl-C or SIGTERM during a one-process training: finish the step, save a checkpoint, then
stop, so at most the step in flight is lost (not up to train.save_every steps). A second signal
stops at once. Runs of several processes keep DeepSpeed's launcher's handling, which terminates
every rank itself."""

from __future__ import annotations

import signal
import sys
from typing import Self

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self, enabled: bool):
        self.enabled, self.signum, self.before = enabled, None, {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Self:
        if self.enabled:
            self.before = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.before.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\ntrain: {signal.Signals(signum).name}: stopping after this step with a checkpoint to "
              f"resume from (send it again to stop at once)", file=sys.stderr, flush=True)

    def message(self, step: int, max_steps: int) -> str:
        return (f"stopped by {signal.Signals(self.signum).name} at step {step} of {max_steps}, with a "
                f"checkpoint of that step: re-run the same command to go on (speckit train: add --resume)")
