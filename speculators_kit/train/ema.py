"""An exponential moving average of the trained weights (`optim.ema`), which evaluations and the
saved drafts use while the optimizer keeps stepping the raw weights.

ZeRO 0/1/2 leave every rank a whole copy of the parameters, so each rank keeps the same average
and no collective is needed; rank 0 writes it into checkpoints for `--resume`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from speculators_kit.core.errors import SpecKitError

FILE = "ema.pt"


class WeightAverage:
    """sum_i (1 - d) d^(n-i) w_i over the n steps so far, divided by 1 - d^n (Adam's bias
    correction), so the random start weighs nothing and every step counts by its age alone."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        for name, p in self.params.items():
            self.total[name].lerp_(p.detach().float(), 1 - self.decay)

    def averaged(self) -> dict[str, torch.Tensor]:
        scale = 1 / (1 - self.decay**self.updates)
        return {name: value * scale for name, value in self.total.items()}

    @contextmanager
    def applied(self):
        """The averaged weights in the module for the duration (the raw ones before any step);
        the raw ones restored after."""
        if not self.updates:
            yield
            return
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for name, value in self.averaged().items():
                self.params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def save(self, directory: Path) -> None:
        torch.save({"decay": self.decay, "updates": self.updates, "total": self.total}, directory / FILE)

    def load(self, directory: Path) -> None:
        path = directory / FILE
        if not path.is_file():
            raise SpecKitError(f"{path} is missing: the checkpoint has no weight average to resume "
                               f"optim.ema from; restore the file or start a new run")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = set(self.total) ^ set(state["total"])
        if missing:
            raise SpecKitError(f"{path} averages other parameters than this draft trains "
                               f"({sorted(missing)[:3]}); start a new run")
        self.updates = state["updates"]
        for name, value in state["total"].items():
            self.total[name].copy_(value)
