"""Run the `speculators` 0.9 trainer on this CPU machine (executed by the peer's own venv python
with the trainer's own command-line flags).

Its trainer assumes an accelerator: the device comes from `torch.accelerator`, batches and the
model are moved with `.to(local_rank)` (an int, i.e. CUDA) and its data loader pins memory.
Runtime patches make it a single-process CPU run and change nothing else: the accelerator is
reported as the CPU, the "local rank" the trainer moves things to and the device a resumed run
loads its checkpoint onto are the CPU device, pinning and its timing helper's synchronize, memory
probe and final cache flush are no-ops.

One fix of the peer's own: in 0.9.0, `--max-steps` ends an epoch but not the run; every later
epoch trains one more step while the cosine schedule climbs back up (vllm-project/speculators
PR #898 proposed the fix and was closed unmerged). Training stops instead once max_steps is
reached (after the epoch that reached it has been checkpointed).
"""

from __future__ import annotations

import torch


def cpu_patches() -> None:
    import torch.utils.data._utils.pin_memory as pinning
    from speculators.train import checkpointer, trainer

    cpu = torch.device("cpu")
    torch.accelerator.current_accelerator = lambda *a, **k: cpu
    torch.accelerator.synchronize = lambda *a, **k: None
    torch.accelerator.memory_allocated = lambda *a, **k: 0
    torch.cpu.empty_cache = lambda: None
    trainer.get_local_rank = lambda: cpu
    checkpointer.get_current_device = lambda: "cpu"
    pinning.pin_memory = lambda data, device=None: data
    stop_at_max_steps(trainer.Trainer)


class MaxStepsReached(Exception):
    pass


def stop_at_max_steps(trainer_class) -> None:
    train_epoch = trainer_class.train_epoch

    def bounded(self, epoch, *args, **kwargs):
        if self.config.max_steps is not None and self.global_step >= self.config.max_steps:
            raise MaxStepsReached
        return train_epoch(self, epoch, *args, **kwargs)

    run_training = trainer_class.run_training

    def until_max_steps(self):
        try:
            run_training(self)
        except MaxStepsReached:
            pass

    trainer_class.train_epoch = bounded
    trainer_class.run_training = until_max_steps


def main() -> None:
    cpu_patches()
    from speculators.train.cli import main as train
    from speculators.train.config import TrainConfig

    train(TrainConfig.resolve())


if __name__ == "__main__":
    main()
