"""DeepSpeed plumbing: the JSON config derived from the schema, process-group setup, and the
optimizer + schedule (a torch AdamW handed to DeepSpeed: no fused-op build on CPU; or DeepSpeed's
Muon)."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import socket

import torch

SHM_DIR = "/dev/shm"  # where POSIX shared memory lives on Linux (tests look there too)


def ds_config(cfg, world_size: int) -> dict:
    extra = dict(cfg.deepspeed.model_extra or {})
    zero = {"stage": cfg.deepspeed.zero_stage, **extra.pop("zero_optimization", {})}
    return {
        **extra,
        "train_micro_batch_size_per_gpu": 1,  # one packed micro-batch (<= micro_batch_tokens)
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.grad_accum * world_size,
        # ZeRO 1/2 would clip Muon's orthogonalized update, not the gradient (OptimSection)
        "gradient_clipping": 0.0 if cfg.optim.kind == "muon" else cfg.optim.grad_clip,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # a torch AdamW is fine, also with offload
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **({"optimizer": muon_section(cfg.optim)} if cfg.optim.kind == "muon" else {}),
    }


def muon_section(optim) -> dict:
    """DeepSpeed's Muon: its ZeRO stages orthogonalize each weight matrix before splitting the
    update across ranks, which a torch optimizer handed to them could not (it sees flat slices).
    It tags 2-D weights other than embeddings and lm_heads for Muon; AdamW takes the rest."""
    return {"type": "Muon", "params": {"lr": optim.muon_lr, "momentum": optim.muon_momentum,
                                       "adam_lr": optim.lr, "betas": list(optim.betas),
                                       "weight_decay": optim.weight_decay}}


def native_bf16() -> bool:
    """Whether this machine computes bf16 matmuls in hardware rather than emulating them."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str) -> tuple[str, str]:
    """The precision to train in, and a console note when the choice costs speed.

    Measured on a 2-core AVX2-only EPYC: a SmolLM2 1-layer EAGLE-3 step of 2048 tokens took
    136 s in bf16 and 6.7 s in fp32, so `auto` picks fp32 there."""
    if precision == "auto":
        return ("bf16" if native_bf16() else "fp32"), ""
    if precision == "bf16" and not native_bf16():
        return "bf16", (" (this machine has no native bf16, so bf16 matmuls are emulated and training runs"
                        " ~20x slower than precision: fp32 or auto)")
    return precision, ""


def init_distributed() -> tuple[int, int]:
    """Rank and world size; a lone process gets a one-member gloo group without a launcher."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # Imported once the group exists (DeepSpeed imports it later), torch.distributed.nn's ten
    # functions keep the group as their `group` default: it outlived destroy_process_group into
    # the interpreter's teardown, where gloo's threads now and then aborted a finished rank.
    importlib.import_module("torch.distributed.nn")

    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if world > 1 and backend == "gloo":
        _unlink_allreduce_buffer(rank)
    return rank, world


def end_distributed() -> None:
    """End this process's group, if it has one, while the interpreter is whole: gloo's threads
    left to its teardown now and then aborted a finished process there."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _unlink_allreduce_buffer(rank: int) -> None:
    """DeepSpeed's CPU all-reduce maps one 66 MB /dev/shm segment per rank and never unlinks it:
    each run of 2 ranks left 132 MB of RAM in /dev/shm until reboot (14 GB here after a day of
    test runs). Once every rank has mapped every segment (each does so before it can reach the
    barrier), the name can go: the memory lives on until the last rank exits, even if killed."""
    env = os.environ
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR')}_{env.get('MASTER_PORT')}_{rank}"
    torch.distributed.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def optimizer_and_schedule(module, optim, max_steps: int) -> dict:
    """deepspeed.initialize's optimizer arguments: a torch AdamW, or for Muon the parameter groups
    its config section (ds_config) builds from; and the schedule, applied to every group's LR."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, optim, max_steps))

    if optim.kind == "muon":
        return {"model_parameters": groups, "lr_scheduler": schedule}
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)
    return {"optimizer": opt, "lr_scheduler": schedule(opt)}


def lr_factor(step: int, optim, max_steps: int) -> float:
    """Linear warmup, then cosine down to min_lr_ratio at max_steps."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine
