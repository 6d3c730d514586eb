"""Ctrl-C or SIGTERM during a training: finish the step, save a checkpoint, then stop, so at most
the step in flight is lost (not up to train.save_every steps). A second signal stops at once.

One process gets the signal itself. With `--nproc N`, speckit gets it and sends each rank
SIGUSR1 (RANK_SIGNALS): a rank must keep dying on SIGTERM, which DeepSpeed's launcher sends the
others when one rank fails. The ranks then agree on the step to stop after, since each writes its
part of the checkpoint.
"""

from __future__ import annotations

import signal
import sys
from typing import Self

import torch
import torch.distributed as dist

from speculators_kit.core.errors import SpecKitError
from speculators_kit.procs import first_signal

ONE_PROCESS_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RANK_SIGNALS = (signal.SIGUSR1,)


class Stopped(SpecKitError):
    """A training that stopped on request, after saving the step it stopped at."""


class StopRequest:
    def __init__(self, signals: tuple[signal.Signals, ...] = ONE_PROCESS_SIGNALS, early: list[int] | None = None):
        """`early`: where a handler installed before this one (train/rank.py) notes the signals
        it took; read after this one is installed, so none falls between the two."""
        self.signals, self.signum, self._handlers, self._early = signals, None, None, early or []

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Self:
        self._handlers = first_signal(self.signals, self._handle)
        self._handlers.__enter__()
        if self._early:
            self.signum = self._early[0]
        return self

    def __exit__(self, *exc) -> None:
        self._handlers.__exit__(*exc)

    def _handle(self, signum) -> None:
        self.signum = signum
        if signum not in RANK_SIGNALS:  # speckit says it for the ranks, once
            print(f"\ntrain: {signal.Signals(signum).name}: stopping after this step with a checkpoint to "
                  f"resume from (send it again to stop at once)", file=sys.stderr, flush=True)

    def agreed(self) -> bool:
        """Whether to stop after this step, asked of every rank at every step: a rank that saw
        the signal a step later than another would wait forever in the checkpoint's collectives."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([float(self.requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def stopped(self, step: int, max_steps: int) -> Stopped:
        return Stopped(f"stopped by {self._cause()} at step {step} of {max_steps}, with a checkpoint of "
                       f"that step: re-run the same command to go on (speckit train: add --resume)")

    def stopped_before(self, step: int) -> Stopped:
        """A stop asked for during the setup, before this run trained a step: nothing to save."""
        if step == 0:
            return Stopped(f"stopped by {self._cause()} before the first step: nothing was trained or "
                           f"saved; re-run the same command to start")
        return Stopped(f"stopped by {self._cause()} before step {step + 1}: the checkpoint of step {step} "
                       f"is unchanged; re-run the same command to go on (speckit train: add --resume)")

    def _cause(self) -> str:
        if self.signum in RANK_SIGNALS or self.signum is None:
            return "speckit's stop request"
        return signal.Signals(self.signum).name
