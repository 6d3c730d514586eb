"""Checkpoints: `checkpoints/step-NNNNNNNN/` = `draft/` (speculator format, loads in stock vLLM)
+ `deepspeed/` (engine, optimizer, schedule) + `state.json` (where the data loop stood, the
resolved config) + with `optim.ema`, `ema.pt` (the weight average the draft holds). Built under
a temp name and renamed, so a checkpoint either exists whole or not at all; only the newest
`keep_last` are kept."""

from __future__ import annotations

import copy
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import save_draft, shared_target_weight
from speculators_kit.core.vocab import draft_ids_of

# What must not change between a run and its resume: a different head cannot load the state,
# different batching would replay other data than the interrupted run would have seen, other
# stores or eval_fraction would split the samples anew, so held-out ones could be trained on, and
# the optimizer (its kind, lr, betas, weight decay) comes back from the checkpoint, so new ones would be
# silently ignored. The schedule's length and shape (max_steps, warmup, floor) may change.
RESUME_KEYS = ("draft", "precision", "target_fingerprint", "layer_ids", "zero_stage", "world_size",
               "batches", "samples", "optimizer")
SINCE_2026_12 = ("samples", "optimizer")  # older checkpoints lack them: compared only when recorded


def root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest(out_dir: Path) -> Path | None:
    done = sorted(p for p in root(out_dir).glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def remove_partial(out_dir: Path) -> None:
    """The half-written checkpoints of a save that failed or was killed (they can hold GBs)."""
    for tmp in root(out_dir).glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def way_on(out_dir: Path) -> str:
    """How a stopped run goes on: from its last whole checkpoint, or from the start."""
    ckpt = latest(out_dir)
    if ckpt is None:
        return "it had saved no checkpoint yet, so the same command starts it again"
    return f"add --resume to the same command to go on from {ckpt.name}"


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def check_resumable(state: dict, identity: dict, ckpt: Path) -> None:
    recorded = [k for k in RESUME_KEYS if k in state["identity"] or k not in SINCE_2026_12]
    changed = [k for k in recorded if state["identity"].get(k) != identity.get(k)]
    if changed:
        details = "; ".join(d for k in changed for d in _differences(k, state["identity"].get(k), identity.get(k)))
        raise SpecKitError(f"cannot resume from {ckpt}: the run changed ({details}). Restore the "
                           f"old settings, or start a new run in another output.dir")


def _differences(key: str, old, new) -> list[str]:
    """`draft.num_layers: checkpoint 1, now 2` rather than both whole sections."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys(), key=str) if old.get(k) != new.get(k)
                for d in _differences(f"{key}.{k}", old.get(k), new.get(k))]
    return [f"{key}: checkpoint {old!r}, now {new!r}"]


def export_head(module, target_dir: Path):
    """An fp32 copy of the head with the frozen shared weights exactly equal to the target's
    (a bf16 round trip would otherwise make them differ and get saved)."""
    head = copy.deepcopy(module.head).float()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not p.requires_grad and name in ("embed_tokens.weight", "lm_head.weight"):
                full = shared_target_weight(target_dir, name)
                p.copy_(full[draft_ids_of(head)] if name == "lm_head.weight" else full)
    return head


def save(engine, module, target_dir: Path, out_dir: Path, step: int, state: dict, keep_last: int,
         provenance: dict, proposer, average=None) -> Path:
    """Collective: every rank calls it. `proposer`: the draft's serving defaults (ProposerSettings);
    `average`: the ema.WeightAverage whose weights the draft gets (the engine state keeps the raw ones)."""
    rank = dist.get_rank()
    final = root(out_dir) / f"step-{step:08d}"
    tmp = root(out_dir) / f".step-{step:08d}.tmp"
    if rank == 0:
        remove_partial(out_dir)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="deepspeed")
    dist.barrier()
    if rank == 0:
        with average.applied() if average else nullcontext():
            head = export_head(module, target_dir)
        if average:
            average.save(tmp)
        kit = head.config.speculators_kit.model_copy(update={"provenance": {**provenance, "step": step},
                                                             "proposer": proposer})
        head.config = head.config.model_copy(update={"speculators_kit": kit})
        save_draft(head, tmp / "draft", target_dir=target_dir)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root(out_dir).glob("step-*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def publish_draft(ckpt: Path, out_dir: Path) -> Path:
    """Copy a checkpoint's draft to `output.dir/draft` (what users pass to vLLM), atomically."""
    target = Path(out_dir) / "draft"
    tmp = Path(out_dir) / ".draft.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt / "draft", tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
