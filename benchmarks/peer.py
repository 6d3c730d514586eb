"""Our draft vs the `speculators` package's (0.9.0, the reference toolkit), trained on the same
hidden states with the same budget, evaluated by the same `speckit eval` (vLLM CPU, batch 1).

    python benchmarks/peer.py --store runs/quickstart/store [--steps 100] [--tokens 2048]
    python benchmarks/peer.py --store runs/qs-full/store --ours runs/qs-full/train --steps 1500 --warmup 50
    python benchmarks/peer.py --store runs/qs/store --store runs/qs/store-lead-ins ... --ours runs/qs/train

`--store` again adds a store: both train on all of them (the quickstart's `--budget full` trains
on four).

`--ours RUN` reuses a finished `speckit train` run (the quickstart's) trained on the same store
with the same budget instead of training ours again; its training time is then not measured.
Another `--ours` on the same --work keeps the peer's finished training when the store, budget
and draft vocabulary match, and re-runs every evaluation side by side.

The peer's training saves a checkpoint every tenth of an epoch. If it was stopped (at full budget
it takes 3-6.4 h here by host, longer than a session), the same command again resumes it from its
last checkpoint, with the same data order; its `train s` then sums the segments up to their last
checkpoints (steps redone after a stop are not counted twice).

Both: 1-layer EAGLE-3 on SmolLM2-135M-Instruct, the same samples (our store exported to the
peer's layout, benchmarks/peer_export.py), the same draft vocabulary (ours, passed to the peer
as d2t/t2d), 3 training-time-test steps, lr, warmup and cosine decay over the same number of
optimizer steps of one `--tokens`-token packed batch each. The peer trains with AdamW; ours with
AdamW, or with what a reused `--ours` run chose (`optim.kind`, recorded in the results). Each toolkit keeps its own recipe
otherwise (initialisation, norms, loss). The peer runs in its own venv
(~/.cache/speculators_kit/peer-venv, made on first use) through benchmarks/peer_train.py.
Its data generation needs a vLLM server with its own connector, which is not timed here.
Writes benchmarks/results/peer.{json,md} (--results names another).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, speckit, write
from peer_export import export_stores

from speculators_kit.eval.run import evaluate
from speculators_kit.target.embedded import resolve_target

VENV = Path.home() / ".cache" / "speculators_kit" / "peer-venv"
PEER = ["speculators==0.9.0", "hs-connectors==0.9.0"]
# The peer's requirements minus torchvision/torchaudio (built for another torch, they break
# imports under torch 2.13.0+cpu) and torch itself (pinned first).
PEER_DEPS = ["aiohttp", "click", "datasets>=4.0.0,<=5.1.0", "httpx", "huggingface-hub", "loguru>=0.7.2,<=0.7.3",
             "numpy>=2.0.0,<=2.5.4", "openai>=2.0.0", "protobuf", "psutil", "pydantic>=2.0.0", "pydantic-settings",
             "rich", "safetensors", "tqdm>=4.66.3,<=4.70.1", "transformers>=5.0.0,<=5.19.0", "typer>=0.12.0"]


def peer_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # Same torch as ours, from the same index (install.sh: PIP_TORCH_ARGS off this machine).
        subprocess.run(pip + ["torch==2.13.0", *os.environ.get("PIP_TORCH_ARGS", "").split()], check=True)
        subprocess.run(pip + ["--no-deps", *PEER], check=True)
        subprocess.run(pip + PEER_DEPS, check=True)
    return python


def train_ours(stores: list[Path], out: Path, a) -> float:
    began = time.perf_counter()
    speckit("train", str(ROOT / "configs" / "train" / "smollm2-eagle3-1layer.yaml"),
            "--set", f"data.stores=[{','.join(map(str, stores))}]", "--set", f"output.dir={out}",
            "--set", f"train.max_steps={a.steps}",
            "--set", f"train.micro_batch_tokens={a.tokens}", "--set", f"optim.lr={a.lr}",
            "--set", f"optim.warmup_steps={a.warmup}", "--set", f"train.eval_every={a.steps}",
            "--set", f"train.save_every={a.steps}", "--set", "logging.tensorboard=false")
    return time.perf_counter() - began


def train_peer(data: Path, out: Path, target: str, draft: Path, vocab: int, a) -> float:
    layers = json.loads((draft / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"]
    args = ["--verifier-name-or-path", target, "--data-path", str(data), "--num-layers", "1",
            "--draft-vocab-size", str(vocab), "--d2t-path", str(data / f"d2t-{vocab}.npy"),
            "--t2d-path", str(data / f"t2d-{vocab}.npy"), "--target-layer-ids", *map(str, layers),
            "--total-seq-len", str(a.tokens), "--hidden-states-dtype", "bfloat16", "--num-workers", "0",
            "--loss-implementation", "eager", "--draft-attn-impl", "sdpa", "--ttt-steps", "3",
            "--optimizer", "adamw", "--weight-decay", "0", "--lr", str(a.lr), "--scheduler-type", "cosine",
            "--scheduler-warmup-steps", str(a.warmup), "--scheduler-total-steps", str(a.steps),
            "--max-steps", str(a.steps), "--epochs", "1000", "--on-missing", "raise",
            # mid-epoch checkpoints, so that a stopped run resumes near where it stopped
            "--checkpoint-freq", "0.1", "--save-path", str(out), "--log-dir", str(out / "logs")]
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    began = time.perf_counter()
    with open(out.parent / "peer_train.log", "a") as log:  # a resumed run appends
        code = subprocess.call([str(peer_python()), str(ROOT / "benchmarks" / "peer_train.py"), *args],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        sys.exit(f"the peer's training failed (exit {code}); see {out.parent / 'peer_train.log'}")
    return time.perf_counter() - began


def last_checkpoint(out: Path) -> Path:
    epochs = sorted((p for p in out.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return epochs[-1]


def checkpointed_seconds(out: Path, began: float) -> float:
    """How long a stopped training segment that began at `began` (epoch seconds) ran until its
    last checkpoint: the steps after it are trained again on resume and count there."""
    saved = [p.stat().st_mtime for p in out.glob("*/training_state.json")]
    return max(0.0, max(saved, default=began) - began)


def resumable_peer(record: Path, settings: dict, fresh: bool) -> dict | None:
    """The progress record of a peer training this --work began with the same settings and did
    not finish (the machine or session stopped), or None."""
    if fresh or not record.is_file():
        return None
    progress = json.loads(record.read_text())
    return progress if progress["settings"] == settings else None


def reused_ours(run: Path, stores: list[Path], a) -> dict:
    """The resolved config of a finished training of ours, if it matches this comparison."""
    config = run / "resolved_config.json"
    if not config.is_file() or not (run / "draft" / "config.json").is_file():
        sys.exit(f"--ours {run}: no finished speckit train run there (needs resolved_config.json "
                 f"and draft/); finish its training or leave out --ours to train ours here")
    cfg = json.loads(config.read_text())
    want = {("data", "stores"): [str(p.resolve()) for p in stores], ("train", "max_steps"): a.steps,
            ("train", "micro_batch_tokens"): a.tokens, ("optim", "lr"): a.lr, ("optim", "warmup_steps"): a.warmup}
    for (section, key), value in want.items():
        have = cfg[section][key]
        if section == "data":
            have = [str(Path(p).expanduser().resolve()) for p in have]
        if have != value:
            sys.exit(f"--ours {run} trained with {section}.{key}={have}, this comparison uses {value}: "
                     f"pass the matching --store/--steps/--tokens/--lr/--warmup, or leave out --ours")
    return cfg


def same_peer_training(before: dict, now: dict, drafts: dict) -> bool:
    """The peer trained under `before` settings used these stores, budget and our draft's vocabulary."""
    if not before or {k: v for k, v in before.items() if k != "ours"} != {k: v for k, v in now.items() if k != "ours"}:
        return False
    if not drafts["peer"].is_dir():
        return False
    from safetensors.torch import load_file

    d2t = {name: load_file(str(drafts[name] / "model.safetensors"))["d2t"] for name in ("ours", "peer")}
    return d2t["ours"].equal(d2t["peer"])


def train_both(stores: list[Path], work: Path, target: str, drafts: dict, a) -> dict:
    """Both trainings, or their earlier results when this --work already has them from the same
    stores and training settings (and --fresh is not given): a re-run only re-evaluates, and eval
    reuses its finished engine runs too."""
    done = work / "train_times.json"
    settings = {"store": [str(p.resolve()) for p in stores], "steps": a.steps, "tokens": a.tokens, "lr": a.lr,
                "warmup": a.warmup, "ours": a.ours}
    earlier = json.loads(done.read_text()) if done.is_file() and not a.fresh else {}
    if earlier.get("settings") == settings and all(d.is_dir() for d in drafts.values()):
        return earlier["seconds"]
    ours_cfg = reused_ours(Path(a.ours), stores, a) if a.ours else None
    if ours_cfg is not None and same_peer_training(earlier.get("settings", {}), settings, drafts):
        # Only our draft changed (another --ours on the same stores, budget and vocabulary):
        # the peer's training stands; the old evaluations go, so everything is re-run side by side.
        shutil.rmtree(work / "eval", ignore_errors=True)
        times = {"ours": None, "peer": earlier["seconds"]["peer"]}
        done.write_text(json.dumps({"settings": settings, "seconds": times}))
        return times
    progress_file = work / "peer_progress.json"
    progress = resumable_peer(progress_file, settings, a.fresh)
    if progress is not None:
        times = progress["seconds"]
        times["peer"] += checkpointed_seconds(work / "peer", progress["began"])
        # What the peer saves when it is sent SIGTERM/SIGINT: no step count, so it would resume at
        # the next epoch; the last mid-epoch checkpoint is the exact place.
        shutil.rmtree(work / "peer" / "interrupted", ignore_errors=True)
        print(f"peer: resuming its stopped training in {work / 'peer'} from its last checkpoint")
    else:
        times = prepare_peer(stores, work, drafts, ours_cfg, a)
    progress_file.write_text(json.dumps({"settings": settings, "seconds": times, "began": time.time()}))
    vocab = json.loads((drafts["ours"] / "config.json").read_text())["draft_vocab_size"]
    times["peer"] += train_peer(work / "peer_data", work / "peer", target, drafts["ours"], vocab, a)
    speckit("convert", str(last_checkpoint(work / "peer")), str(drafts["peer"]), "--from", "speculators",
            "--target", target)
    done.write_text(json.dumps({"settings": settings, "seconds": times}))
    progress_file.unlink()
    return times


def prepare_peer(stores: list[Path], work: Path, drafts: dict, ours_cfg: dict | None, a) -> dict:
    """A fresh --work: ours trained (unless reused), our stores exported for the peer."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    peer_python()
    if ours_cfg is None:
        times = {"ours": train_ours(stores, work / "ours", a)}
        ours_cfg = json.loads((work / "ours" / "resolved_config.json").read_text())
    else:
        times = {"ours": None}
    exported = export_stores(stores, work / "peer_data", drafts["ours"], ours_cfg["data"]["eval_fraction"],
                             ours_cfg["data"]["max_length"])
    print(f"peer: {exported} training samples exported to {work / 'peer_data'}")
    (work / "peer").mkdir()
    times["peer"] = 0.0
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, action="append",
                    help="a SmolLM2 hidden-state store (speckit quickstart writes one); repeat for more")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--prompts", default="gsm8k,mt-bench")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--work", default=str(ROOT / "runs" / "peer"))
    ap.add_argument("--fresh", action="store_true", help="retrain both even if --work has both drafts")
    ap.add_argument("--ours", help="a finished `speckit train` output dir to use instead of training ours")
    ap.add_argument("--results", default="peer", help="name of the benchmarks/results/NAME.{json,md} it writes")
    a = ap.parse_args()
    target = str(resolve_target("smollm2-135m-instruct"))
    work = Path(a.work)
    drafts = {"ours": Path(a.ours) / "draft" if a.ours else work / "ours" / "draft", "peer": work / "peer_draft"}
    times = train_both([Path(p) for p in a.store], work, target, drafts, a)
    names = {"ours": "speculators_kit", "peer": "speculators 0.9.0"}
    rows = []
    for prompts in a.prompts.split(","):
        base = work / "eval" / prompts / "base"
        evaluate(target, None, prompts, base, a.num_prompts, k=a.k, max_new_tokens=a.max_new_tokens, log=print)
        for name, draft in drafts.items():
            out = work / "eval" / prompts / name
            (out / "runs").mkdir(parents=True, exist_ok=True)
            shutil.copy(base / "runs" / "target_only.json", out / "runs" / "target_only.json")
            # fixed k for both: a draft's serving default (early exit in its config.json) would make
            # its tau count only the steps that drafted
            s = evaluate(target, str(draft), prompts, out, a.num_prompts, k=a.k, max_new_tokens=a.max_new_tokens,
                         log=print, proposer={"early_exit_threshold": 0})
            rows.append({"prompts": prompts, "draft": names[name], "tau": s["tau"],
                         "acceptance per position": " ".join(f"{x:.2f}" for x in s["acceptance_per_position"]),
                         "speedup": s["speedup"], "identical": s["greedy_identical"],
                         # False: something else computed while a run was timed (report.md says which)
                         "clean timing": s["timing_clean"],
                         "train s": times[name],
                         "train tokens/s": a.steps * a.tokens / times[name] if times[name] else None})
    for prompts in a.prompts.split(","):
        ours, peer = [r for r in rows if r["prompts"] == prompts]
        ours["tau vs peer"] = ours["tau"] / peer["tau"]
    ours_optim = json.loads((drafts["ours"].parent / "resolved_config.json").read_text())["optim"]
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "store": a.store, "ours": a.ours,
            "ours optimizer": ours_optim.get("kind", "adamw"),
            "ours weight decay": ours_optim.get("weight_decay", 0.0), "steps": a.steps,
            "tokens per step": a.tokens, "lr": a.lr, "warmup": a.warmup, "k": a.k, "num_prompts": a.num_prompts,
            "max_new_tokens": a.max_new_tokens, "date": time.strftime("%Y-%m-%d")}
    write(a.results, rows, ["prompts", "draft", "tau", "tau vs peer", "acceptance per position", "speedup", "identical",
                         "clean timing", "train s", "train tokens/s"], meta)


if __name__ == "__main__":
    main()
