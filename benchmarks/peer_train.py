"""Run the `speculators` 0.9 trainer on this CPU machine (executed by the peer's own venv python
with the trainer's own command-line flags).

Its trainer assumes an accelerator: the device comes from `torch.accelerator`, batches and the
model are moved with `.to(local_rank)` (an int, i.e. CUDA) and its data loader pins memory.
Runtime patches make it a single-process CPU run and change nothing else: the accelerator is
reported as the CPU, the "local rank" the trainer moves things to is the CPU device, pinning
and its timing helper's synchronize, memory probe and final cache flush are no-ops.
"""

from __future__ import annotations

import torch


def cpu_patches() -> None:
    import torch.utils.data._utils.pin_memory as pinning
    from speculators.train import trainer

    cpu = torch.device("cpu")
    torch.accelerator.current_accelerator = lambda *a, **k: cpu
    torch.accelerator.synchronize = lambda *a, **k: None
    torch.accelerator.memory_allocated = lambda *a, **k: 0
    torch.cpu.empty_cache = lambda: None
    trainer.get_local_rank = lambda: cpu
    pinning.pin_memory = lambda data, device=None: data


def main() -> None:
    cpu_patches()
    from speculators.train.cli import main as train
    from speculators.train.config import TrainConfig

    train(TrainConfig.resolve())


if __name__ == "__main__":
    main()
