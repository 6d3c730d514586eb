"""The draft-training recipe: setup -> train (with eval and checkpoints) -> cleanup.

Runs in every DeepSpeed process (`python -m speculators_kit.train.recipe CONFIG ...` under the
launcher, or in-process for one process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from speculators_kit import cpu_runtime
from speculators_kit.core.errors import DiskFull, SpecKitError
from speculators_kit.core.store import full_disk
from speculators_kit.train import checkpoint, data
from speculators_kit.train.acceptance import tau_from_stats
from speculators_kit.train.stop import RANK_SIGNALS, Stopped, StopRequest


@dataclass
class Run:
    cfg: object
    rank: int
    world: int
    target: Path
    out: Path
    readers: list
    train_refs: list
    held_refs: list
    module: object = None
    engine: object = None
    average: object = None  # ema.WeightAverage with optim.ema, else None
    identity: dict = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    pos: int = 0  # optimizer steps done inside the current epoch
    log: object = None


def setup(cfg, resume: bool) -> Run:
    from speculators_kit.core.fingerprint import target_fingerprint
    from speculators_kit.target.embedded import resolve_target
    from speculators_kit.train.ds import init_distributed, resolve_precision
    from speculators_kit.train.heads import build_head

    cfg.precision, precision_note = resolve_precision(cfg.precision)  # resumes and provenance see it
    target = resolve_target(cfg.target.path)
    fingerprint = target_fingerprint(target)
    readers = data.open_stores(cfg.data.stores, fingerprint, None)
    manifest = readers[0].manifest
    out = Path(cfg.output.dir).expanduser()
    ckpt = _resume_point(out, resume)
    head = build_head(cfg, target, readers)  # all config checks before any process group exists
    rank, world = init_distributed()
    train_refs, held_refs = data.split(readers, cfg.data.eval_fraction, cfg.data.max_length)
    run = Run(cfg, rank, world, target, out, readers, train_refs, held_refs)
    run.identity = {"draft": cfg.draft.model_dump(), "precision": cfg.precision,
                    "target_fingerprint": fingerprint, "layer_ids": manifest.layer_ids,
                    "zero_stage": cfg.deepspeed.zero_stage, "world_size": world,
                    "batches": {k: getattr(cfg.data, k) for k in ("max_length", "seed", "packing")}
                    | {"micro_batch_tokens": cfg.train.micro_batch_tokens},
                    "samples": {"stores": [str(Path(s).expanduser().resolve()) for s in cfg.data.stores],
                                "eval_fraction": cfg.data.eval_fraction},
                    "optimizer": _optimizer_identity(cfg.optim)}
    _build_engine(run, head)
    if ckpt is not None:
        state = checkpoint.read_state(ckpt)
        checkpoint.check_resumable(state, run.identity, ckpt)
        run.engine.load_checkpoint(str(ckpt), tag="deepspeed")
        if run.average:
            run.average.load(ckpt)
        run.step, run.epoch, run.pos = state["step"], state["epoch"], state["pos"]
    if rank == 0:
        run.log = _Logger(out, cfg, keep_until=run.step if ckpt else 0)
        run.log.console(f"train: {data.describe(readers, train_refs, held_refs, cfg.data.max_length)}; {world} process(es), "
                        f"ZeRO {cfg.deepspeed.zero_stage}, {cfg.precision}{precision_note}{_threads_note(world)}"
                        + (f"; resuming at step {run.step} from {ckpt}" if ckpt else ""))
        if cfg.optim.kind == "muon":
            run.log.console(_muon_note(run.module))
        if note := _schedule_note(cfg.optim.warmup_steps, cfg.train.max_steps):
            run.log.console(note)
        if ckpt is not None and (note := _resume_note(state["config"], cfg, run.step)):
            run.log.console(note)
    return run


def _schedule_note(warmup: int, max_steps: int) -> str | None:
    """Warmup that lasts the whole run (a short trial of a shipped config, whose warmup is 50):
    the learning rate never reaches optim.lr nor decays, which the loss curve alone hides."""
    if warmup < max_steps:
        return None
    return (f"train: optim.warmup_steps {warmup} >= train.max_steps {max_steps}: the learning rate only "
            f"warms up (to {max_steps / warmup:.2g} x optim.lr at the last step) and never decays; set "
            f"optim.warmup_steps below {max_steps} for the whole schedule")


def _muon_note(module) -> str:
    """Which trained parameters DeepSpeed gave to Muon (it tags them at deepspeed.initialize)."""
    trained = [p for p in module.parameters() if p.requires_grad]
    muon = [p for p in trained if getattr(p, "use_muon", False)]
    return (f"optimizer: Muon on {len(muon)} weight matrices ({sum(p.numel() for p in muon):,} parameters), "
            f"AdamW on {len(trained) - len(muon)} other tensors")


def _resume_note(before: dict, cfg, step: int) -> str:
    """The settings a resume changed (those it may change: the others were refused), so a loss or
    schedule switched mid-run is on the console, and where the LR jumps when the schedule changed."""
    from speculators_kit.train.ds import lr_factor

    was, now = _flat(before), _flat(cfg.model_dump(mode="json"))
    changed = [f"{k} {was[k]!r} -> {now[k]!r}" for k in now if k in was and was[k] != now[k]]
    if not changed:
        return ""
    note = f"train: resumed with settings changed since the checkpoint: {', '.join(changed)}"
    old_optim, old_steps = type(cfg.optim)(**before["optim"]), before["train"]["max_steps"]
    lr_was = cfg.optim.lr * lr_factor(step, old_optim, old_steps)
    lr_now = cfg.optim.lr * lr_factor(step, cfg.optim, cfg.train.max_steps)
    if lr_was != lr_now:
        note += f"; from step {step} the LR follows the new schedule ({lr_was:.3g} -> {lr_now:.3g})"
    return note


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _threads_note(world: int) -> str:
    """CPU threads per process, and why when cores sit idle: a leftover OMP_NUM_THREADS=1 (as
    test setups export) made one `--budget full` training run take 1.9 s/step instead of 1.15."""
    if torch.cuda.is_available():
        return ""
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    note = f", {threads} CPU thread(s) per process"
    runtime = cpu_runtime.loaded()
    note += f" with {' and '.join(runtime)}" if runtime else ""
    if threads * world < cores and os.environ.get("OMP_NUM_THREADS"):
        note += f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} leaves {cores - threads * world} of {cores} cores idle)"
    return note


def _optimizer_identity(optim) -> dict:
    """What a checkpoint's optimizer state fixes. AdamW's keys are the ones recorded before Muon
    existed, so those checkpoints still resume."""
    keys = {"lr", "betas", "weight_decay"} | ({"kind", "muon_lr", "muon_momentum"} if optim.kind == "muon" else set())
    keys |= {"ema"} if optim.ema else set()  # the average comes back from the checkpoint too
    return optim.model_dump(mode="json", include=keys)


def _resume_point(out: Path, resume: bool):
    ckpt = checkpoint.latest(out)
    if resume and ckpt is None:
        raise SpecKitError(f"--resume: no checkpoint in {checkpoint.root(out)}; start without --resume")
    if not resume and ckpt is not None:
        raise SpecKitError(f"{out} already holds checkpoints of a run; pass --resume to continue "
                           f"it, or choose another output.dir")
    return ckpt


def _build_engine(run: Run, head) -> None:
    import deepspeed

    from speculators_kit.train.ds import ds_config, optimizer_and_schedule
    from speculators_kit.train.objective import DraftTrainModule

    cfg = run.cfg
    run.module = DraftTrainModule(head, run.target, cfg.loss, cfg.draft.train_lm_head)
    run.engine, _, _, _ = deepspeed.initialize(model=run.module, config=ds_config(cfg, run.world),
                                               **optimizer_and_schedule(run.module, cfg.optim, cfg.train.max_steps))
    if cfg.optim.ema:
        from speculators_kit.train.ema import WeightAverage

        run.average = WeightAverage(run.module, cfg.optim.ema)


def train(run: Run, stop: StopRequest | None = None) -> dict:
    """`stop`: a launched rank's, taken from its start (else this process's own, for the loop)."""
    window = {"tokens": 0, "seconds": 0.0, "losses": []}  # since the last log line; training only
    # A stop asked of a rank during its setup or the first eval ends it before a step, which it
    # would have to save: a checkpoint of step 1 would make the re-run the user stopped for need
    # --resume. One process stops at once until the loop (KeyboardInterrupt).
    _stop_if_asked_before(run, stop)
    last_eval = evaluate(run) if run.step == 0 else None
    _stop_if_asked_before(run, stop)
    bar = _bar(run)
    # the bar closes on an error too, so the error starts its own line
    with contextlib.nullcontext() if bar is None else bar, \
            contextlib.nullcontext(stop) if stop is not None else StopRequest() as request:
        while run.step < run.cfg.train.max_steps:
            last_eval = _epoch(run, window, bar, request) or last_eval
    return {"step": run.step, "eval": last_eval, "draft": str(run.out / "draft")}


def _stop_if_asked_before(run: Run, stop: StopRequest | None) -> None:
    if stop is not None and stop.agreed():
        raise stop.stopped_before(run.step)


def _epoch(run: Run, window: dict, bar, stop: StopRequest) -> dict | None:
    """Steps to the end of this pass over the data (or to max_steps); the last eval's result."""
    cfg, t, last_eval = run.cfg, run.cfg.train, None
    per_step = run.world * t.grad_accum
    order = data.batches(run.train_refs, t.micro_batch_tokens, cfg.data.max_length, cfg.data.seed,
                         run.epoch, pack=cfg.data.packing)
    steps_in_epoch = len(order) // per_step
    if steps_in_epoch == 0:
        raise SpecKitError(f"the training data makes {len(order)} micro-batches, fewer than one "
                           f"optimizer step needs ({per_step}); lower train.micro_batch_tokens "
                           f"or grad_accum, or add samples")
    while run.pos < steps_in_epoch and run.step < t.max_steps:
        began = time.perf_counter()
        loss, n = _one_step(run, order, per_step)
        run.step, run.pos = run.step + 1, run.pos + 1
        window["tokens"] += n
        window["seconds"] += time.perf_counter() - began
        window["losses"].append(loss)
        if bar:
            bar.update(1)
        if run.step % t.log_every == 0 or run.step == t.max_steps:
            _log_train(run, window, bar)
            window.update(tokens=0, seconds=0.0, losses=[])
        if run.step % t.eval_every == 0 or run.step == t.max_steps:
            last_eval = evaluate(run)
        stopping = stop.agreed()
        if run.step % t.save_every == 0 or run.step == t.max_steps or stopping:
            _save(run)
        if stopping:
            raise stop.stopped(run.step, t.max_steps)
    if run.pos >= steps_in_epoch:
        run.epoch, run.pos = run.epoch + 1, 0
    return last_eval


def _one_step(run: Run, order, per_step: int) -> tuple[float, int]:
    run.engine.train()
    total, tokens = 0.0, 0
    for a in range(run.cfg.train.grad_accum):
        rows = order[run.pos * per_step + a * run.world + run.rank]
        batch = data.collate(run.readers, rows, run.cfg.data.max_length)
        loss, _ = run.engine(batch)
        run.engine.backward(loss)
        run.engine.step()
        total += float(loss.detach()) / run.cfg.train.grad_accum
        tokens += int(batch["valid"].sum())
    if run.average:
        run.average.update()
    stats = torch.tensor([total, tokens], dtype=torch.float64)
    dist.all_reduce(stats)
    return float(stats[0]) / run.world, int(stats[1])


def evaluate(run: Run) -> dict | None:
    """Held-out loss and acceptance of the weights a save would write (the average with optim.ema,
    and then of the raw weights too, as `*_raw`)."""
    if not run.held_refs:
        return None
    if run.average is None:
        result = _held_out(run)
    else:
        raw = _held_out(run)
        with run.average.applied():
            result = _held_out(run) | {"eval_loss_raw": raw["eval_loss"], "tau_raw": raw["tau"]}
    if run.log:
        run.log.record(result)
        raw_note = f" (raw weights: loss {result['eval_loss_raw']:.4f}, tau {result['tau_raw']:.3f})" \
            if run.average else ""
        run.log.console(f"eval step {run.step}: loss {result['eval_loss']:.4f}, tau {result['tau']:.3f} "
                        f"(k={result['k']}; {result['tau_every_position']:.3f} from every position), "
                        f"acceptance per position {[round(x, 3) for x in result['accept_per_pos']]}{raw_note}")
    return result


@torch.no_grad()
def _held_out(run: Run) -> dict:
    cfg = run.cfg
    refs = run.held_refs[: cfg.train.eval_samples]
    # Unpacked whatever data.packing says: the same batches, so the eval loss compares across runs.
    order = data.batches(refs, cfg.train.micro_batch_tokens, cfg.data.max_length, cfg.data.seed, 0)
    run.engine.eval()
    # Chains as long as the ones the draft will serve (its num_speculative_tokens), not only the
    # trained ttt_steps: acceptance past the trained steps is what a longer TTT unroll buys.
    k = max(cfg.loss.ttt_steps, cfg.draft.num_speculative_tokens)
    sums = torch.zeros(2 * k + 4, dtype=torch.float64)  # chain_stats, walk_stats, loss
    for i in range(run.rank, len(order), run.world):
        loss, stats = run.engine(data.collate(run.readers, order[i], cfg.data.max_length), chain=k)
        sums[:-1] += stats.cpu()
        sums[-1] += float(loss) * sum(map(len, order[i]))
    dist.all_reduce(sums)
    # τ is the decoding walk's, the one serving reproduces; the every-position mean is kept
    # for comparison with runs before 2026-12-01, which reported it as τ (16% higher).
    tau, per_pos = tau_from_stats(sums[k + 2: 2 * k + 3])
    return {"step": run.step, "eval_loss": float(sums[-1]) / len(refs), "tau": tau,
            "accept_per_pos": per_pos, "tau_every_position": tau_from_stats(sums[: k + 1])[0], "k": k}


def _save(run: Run) -> None:
    state = {"step": run.step, "epoch": run.epoch, "pos": run.pos, "identity": run.identity,
             "config": run.cfg.model_dump(mode="json")}
    provenance = {"created_by": "speckit train", "config": state["config"],
                  "stores": run.identity["samples"]["stores"]}
    ckpt = checkpoint.save(run.engine, run.module, run.target, run.out, run.step, state,
                           run.cfg.train.keep_last, provenance, run.cfg.proposer, run.average)
    if run.rank == 0:
        draft = checkpoint.publish_draft(ckpt, run.out)
        run.log.console(f"saved {ckpt} and {draft}")
    dist.barrier()


def _log_train(run: Run, window: dict, bar) -> None:
    if run.log is None:
        return
    steps = len(window["losses"])
    rate = window["tokens"] / max(window["seconds"], 1e-9)
    lrs = _lrs(run.engine)
    row = {"step": run.step, "loss": sum(window["losses"]) / steps, **lrs, "tokens_per_s": rate,
           "step_s": window["seconds"] / steps, "epoch": run.epoch}
    run.log.record(row)
    if bar:
        lr_text = {k: f"{v:.2e}" for k, v in lrs.items()}
        bar.set_postfix(loss=f"{row['loss']:.4f}", **lr_text, tok_s=f"{rate:.0f}")


def _lrs(engine) -> dict:
    """The scheduled LRs: `lr` is AdamW's (under Muon, its auxiliary AdamW's on the norms), `muon_lr`
    Muon's. DeepSpeed's Muon puts its own groups first, so the first group alone would show 0.02."""
    lrs = {}
    for group in engine.optimizer.param_groups:
        lrs.setdefault("muon_lr" if group.get("use_muon") else "lr", group["lr"])
    return dict(sorted(lrs.items()))


def _bar(run: Run):
    if run.rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=run.cfg.train.max_steps, initial=run.step, unit="step", desc="train",
                dynamic_ncols=True, file=sys.stderr)


class _Logger:
    """Rank 0: metrics.jsonl (cut back to the resume step), TensorBoard, the console."""

    def __init__(self, out: Path, cfg, keep_until: int):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        rows = []
        if keep_until and self.path.is_file():
            rows = [r for r in map(json.loads, self.path.read_text().splitlines()) if r["step"] <= keep_until]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "resolved_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        self.tb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def record(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()

    @staticmethod
    def console(text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def run_training(cfg, resume: bool = False, stop: StopRequest | None = None) -> dict:
    try:
        run = setup(cfg, resume)
        try:
            return train(run, stop)
        finally:
            if run.log and run.log.tb:
                run.log.tb.close()
    except Exception as err:  # torch says a full disk as `iostream error`, safetensors its own way
        out = Path(cfg.output.dir).expanduser()
        checkpoint.remove_partial(out)  # a save that failed gives back the space it took
        said = isinstance(err, SpecKitError) and not isinstance(err, DiskFull)
        if said or (full := full_disk(out)) is None:
            raise
        raise SpecKitError(f"training stopped: {full}, then {checkpoint.way_on(out)}") from err


def main(argv=None, early: list[int] | None = None) -> int:
    """Each launched process's training (train/rank.py: `early`, the stop requests it took first)."""
    from speculators_kit.schema import load_config
    from speculators_kit.train.ds import end_distributed

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        with StopRequest(RANK_SIGNALS, early) as stop:
            result = run_training(load_config(args.config, "train", args.set), args.resume, stop)
        if dist.get_rank() == 0:
            print(json.dumps(result))
    except SpecKitError as err:
        _report(err)
        return 1
    finally:
        end_distributed()
    return 0


def _report(err: SpecKitError) -> None:
    """Under `speckit train --nproc N`, speckit says it once after DeepSpeed's launcher's lines;
    else each rank does (a stop, which every rank shares, only once)."""
    from speculators_kit.train.launch import RANK_ERRORS

    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get(RANK_ERRORS):
        with contextlib.suppress(OSError):  # a remote rank: not its machine's folder
            (Path(os.environ[RANK_ERRORS]) / f"rank-{rank}.txt").write_text(str(err))
            return
    if rank == 0 or not isinstance(err, Stopped):
        print(f"error: {err}", file=sys.stderr)
