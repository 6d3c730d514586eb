"""`speckit quickstart`: from nothing to a measured draft on the embedded target.

target prepare -> datagen (conversations the target writes itself, or GSM8K when a path is
given) -> train (1-layer EAGLE-3) -> eval on MT-bench -> the results table and the serve
command. Every stage leaves its output under --out; re-running skips what is finished (the
store resumes, training resumes from its last checkpoint, eval reuses finished engine runs).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from speculators_kit.core.errors import SpecKitError

# small: 12 min on a 2-core AVX-512 CPU (2026-12-01: 2.2 target and questions, 2.5 capture, 3.9
# training in bf16, 3 eval); on 2-core AVX2-only ones ~30 min estimated from the stage rates of
# 600 samples and 400 steps on one (40 min: 11 capture, 18.5 training at ~2.6 s/step in fp32, 5
# eval), and 59 min measured on a slower one (2026-12-06, 2.0 GHz: 22 datagen, 24 training at
# ~5.8 s/step, 13 eval; quickstart_small_avx2_2ghz.*). Held-out τ of the 600-sample run
# stopped rising by step 300 (1.42/1.59/1.66/1.66 at 100-400), so 450 samples and 240 steps
# lose little (held-out 1.64, MT-bench τ 1.30 vs 1.34); 240 samples and 150 steps gave a draft
# that slowed decoding to 0.79x, so the small budget is not cut to fit 30 min on the slow host.
# full: the README's published numbers (its wall time below); on the AVX2-only CPU the 3000
# questions without lead-ins took ~2 h of datagen (17 min for the questions, ~4 min per 120
# answered and captured conversations) and training steps ~3.2 s each (draft vocabulary 8192):
# 6.7x the samples (20x with the lead-in stores) at twice the answer length, 16.7x the
# training steps, MT-bench at k=5 with the ngram baseline. Data, not steps, is what limits the draft
# here: with 1200 samples, 7 passes over the store drove the training loss to 0.8 while the
# held-out loss stayed at 2.1, so the budget buys samples (~3 passes over them).
# init: a draft layer copied from the target's last layer leads for the first ~400 steps
# (held-out τ 1.99 vs 1.89 at step 375 of the full budget); a random one wins by the end
# (3.10 vs 2.88 at step 1500).
# loss_on all (loss.tokens): the prompts are the target's own text here, and training on their
# distributions too raised the full budget's MT-bench τ 2.16 -> 2.22 (7 of 8 categories) at
# equal held-out τ; the small budget keeps the answer-only loss its published numbers used.
# lead_in_stores: stores of questions opened by the general lead-ins (code, arithmetic, science,
# writing tasks...), one seed each. The first 2000, at the same 1500 steps: MT-bench τ 2.20 ->
# 2.37 (math 2.13 -> 2.56, coding 1.87 -> 2.13, stem 1.96 -> 2.24) and 1.35x -> 1.54x / 1.63x
# (two runs); each store ~25 min of datagen on a 2-core AVX-512 CPU (2026-12-01). The second
# 2000 came with 2000 steps (~2 passes over the data, as before): MT-bench τ at fixed k 2.37 ->
# 2.55, up in all 8 categories, 1.52x (2026-12-01). A third, 1000 questions with data.turns 2 (their
# second turns too, 814k tokens, 47 min of datagen), at the same 2000 steps: 2.56, no gain at
# that step count; nor a second draft layer (draft.num_layers 2, the three stores, 2000 steps:
# 2.52, 2026-12-02).
# More steps were the lever left: the four stores at 3000 steps gave 2.72 (held-out 2.82 / 2.92 /
# 2.95 at steps 2000 / 2500 / 3000, still rising), so the budget now takes the third store and
# 4000 steps (~3 passes over its 2.6M tokens): held-out τ 3.05, MT-bench τ 2.81 at fixed k,
# 1.63x as served with early exit, ngram 1.38x in that run (2026-12-02).
# Muon with weight decay 0.1 took 4000 steps to 2.95; 6000 steps (~4.5 passes) to 2.99 and
# held-out 3.16 (2026-12-05): steps are nearly spent, the rest is data.
# optim.kind muon: on the first lead-in store alone at 1000 steps it
# gave held-out τ 2.52 vs AdamW's 2.28 and MT-bench τ 2.31 vs 2.12 (benchmarks/results/optimizer_muon.*).
# early_exit: the draft's serving default (config.json). On 16 MT-bench questions with the
# first lead-in draft, 1.47x at fixed k=5, 1.66x at 0.2, 1.69x at 0.4 (medians of 2 repeats):
# verifying 1+5 tokens costs 1.24 target steps here, ~1+2 tokens 1.00.
BUDGETS = {
    "small": {"samples": 450, "new_tokens": 128, "steps": 240, "tokens": 2048, "warmup": 20,
              "lr": 1e-3, "init": "target-last-layer", "loss_on": "answer", "eval_prompts": 8,
              "eval_tokens": 128, "k": 3, "ngram": False, "draft_vocab": 8192,
              "wall": "12-18 min on 2 AVX-512 cores, 40-60 on 2 AVX2-only ones"},
    "full": {"samples": 3000, "lead_in_stores": ((2000, 1), (2000, 1), (1000, 2)), "new_tokens": 256,
             "steps": 6000, "tokens": 2048, "warmup": 50, "lr": 1e-3, "init": "random", "loss_on": "all",
             "eval_prompts": 40, "eval_tokens": 256, "k": 5, "ngram": True, "early_exit": 0.3,
             # MT-bench tau 2.95 at fixed k against AdamW's 2.81 at 4000 steps
             # (quickstart_full_muon_bf16_fixed_k.*); 6000 steps: 2.99, held-out 3.16 against 3.12
             # (quickstart_full_6000_fixed_k.*, 2026-12-05)
             "optim": {"kind": "muon", "weight_decay": 0.1}, "model_dtype": "auto",
             # draft vocabulary 16384: MT-bench tau 3.09 at fixed k against 2.99 with 8192
             # (quickstart_full_v16k_fixed_k.*, 2026-12-07), at 1.65x the step time (draft_vocab_16384.*);
             # the 8192 run had other stores, and on one store at 1000 steps the two are level
             # (draft_vocab_lead_ins.*): kept because it is what the published 3.09 was trained with
             "draft_vocab": 16384,
             # measured on a 2-core Zen 4 (2026-12-07): stores 5-6.5 h (one restart), training 3.6 h,
             # eval 0.6 h; AVX2-only is the small budget's 3.3x, not measured
             "wall": "~10 h on 2 AVX-512 cores, ~30 h or more on 2 AVX2-only ones"},
}
TARGET = "smollm2-135m-instruct"


def log(msg: str) -> None:
    print(f"[quickstart] {msg}", file=sys.stderr, flush=True)


def datagen_configs(out: Path, b: dict, gsm8k: str | None) -> dict[str, dict]:
    """Suffix -> the datagen config of store{suffix}: the conversations and, for `full`, stores of
    questions opened by the general lead-ins (seeds 1, 2.., so other questions than the first store's),
    each (questions, turns per conversation)."""
    if gsm8k:
        stores = {"": {"source": "jsonl", "path": str(Path(gsm8k).resolve()), "prompt_field": "question",
                       "limit": b["samples"]}}
    else:
        stores = {"": {"source": "self", "limit": b["samples"], "seed": 0}}
        for i, (n, turns) in enumerate(b.get("lead_in_stores", ()), 1):  # one seed each: other questions
            stores["-lead-ins" + (f"-{i}" if i > 1 else "")] = {"source": "self", "limit": n, "seed": i,
                                                                 "turns": turns, "lead_ins": "general"}
    return {suffix: {"target": {"path": TARGET}, "data": {**data, "max_length": 1024},
                     "regenerate": {"enabled": True, "max_new_tokens": b["new_tokens"], "temperature": 0.0},
                     "capture": {"backend": "vllm", "layers": "auto", "dtype": "bf16", "batch_size": 64,
                                 "model_dtype": b.get("model_dtype", "float32")},
                     "output": {"dir": str(out / f"store{suffix}"), "shard_samples": 120}}
            for suffix, data in stores.items()}


def train_config(out: Path, b: dict, suffixes: list[str]) -> dict:
    cfg = {"target": {"path": TARGET},
           "data": {"stores": [str(out / f"store{s}") for s in suffixes], "eval_fraction": 0.05,
                    "max_length": 1024, "seed": 0},
           "draft": {"arch": "eagle3", "num_layers": 1, "draft_vocab_size": b["draft_vocab"],
                     "init": b["init"], "num_speculative_tokens": b["k"]},
           # ttt_steps 5 (the served k) trailed 3 on held-out τ at equal steps, at 1.69x the step
           # time (benchmarks/results/ttt_steps_5.*); 2 trailed held out and was level on MT-bench,
           # at 0.74x (ttt_steps_2_lead_ins.*)
           "loss": {"kind": "kl", "ttt_steps": 3, "step_weights": "uniform", "tokens": b["loss_on"]},
           "optim": {"lr": b["lr"], "warmup_steps": b["warmup"], **b.get("optim", {})},
           "train": {"max_steps": b["steps"], "micro_batch_tokens": b["tokens"],
                     "eval_every": max(b["steps"] // 4, 1), "save_every": max(b["steps"] // 4, 1)},
           "deepspeed": {"zero_stage": 2}, "precision": "auto", "output": {"dir": str(out / "train")},
           "logging": {"tensorboard": True}}
    if b.get("early_exit"):  # the draft's serving default, in its config.json
        cfg["proposer"] = {"early_exit_threshold": b["early_exit"]}
    return cfg


def write_yaml(path: Path, data: dict, kind: str):
    from speculators_kit.schema import KINDS, validate

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# written by speckit quickstart; re-run with: speckit {kind} {path}\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return validate(KINDS[kind], data, str(path))


def run(out: str, budget: str = "small", gsm8k: str | None = None) -> dict:
    from speculators_kit.datagen.run import run as datagen
    from speculators_kit.eval.run import evaluate
    from speculators_kit.target.embedded import prepare
    from speculators_kit.train import checkpoint
    from speculators_kit.train.launch import train_here

    out, b = Path(out).expanduser().resolve(), BUDGETS[budget]
    if gsm8k and not Path(gsm8k).expanduser().is_file():  # before the target is built
        raise SpecKitError(f"--gsm8k {gsm8k} is not a file: give GSM8K's train.jsonl (a 'question' "
                           "field per line), never its test split")
    clock = StageClock(out / "timings.json", budget)
    log(f"--budget {budget}: {b['wall']}; this CPU: {clock.entry['cpu_capability']}, "
        f"{clock.entry['cores']} cores")
    with clock("target"):
        target = prepare(TARGET)
        log(f"1/4 target: {target}")
    stores = datagen_configs(out, b, gsm8k)
    train = train_config(out, b, list(stores))
    check_earlier_stages(out, target, stores, train["data"]["stores"])  # before datagen spends an hour
    with clock("datagen"):
        for suffix, data in stores.items():
            cfg = write_yaml(out / "configs" / f"datagen{suffix}.yaml", data, "datagen")
            what = "GSM8K questions" if gsm8k else "conversations"
            log(f"2/4 datagen: {cfg.data.limit} {what} -> {cfg.output.dir}")
            datagen(cfg, out / "configs", log=log)
    cfg = write_yaml(out / "configs" / "train.yaml", train, "train")
    last = checkpoint.latest(out / "train")
    with clock("train"):
        if last is not None and checkpoint.read_state(last)["step"] >= b["steps"]:
            log(f"3/4 train: done ({last})")
        else:
            log(f"3/4 train: {b['steps']} steps -> {out / 'train' / 'draft'}")
            train_here(cfg, resume=last is not None)
    draft = out / "train" / "draft"
    with clock("eval"):
        log(f"4/4 eval: MT-bench, {b['eval_prompts']} prompts, k={b['k']}")
        summary = evaluate(TARGET, str(draft), "mt-bench", out / "eval", b["eval_prompts"], b["k"], 0.0,
                           b["eval_tokens"], "vllm", "ngram" if b["ngram"] else None, log=log)
    print((out / "eval" / "report.md").read_text())
    print(clock.summary())
    print(serve_commands(draft, b["k"]))
    return summary


class StageClock:
    """Times each stage of this invocation and records it in out/timings.json (one entry per
    invocation, with the CPU it ran on: the budgets' wall times differ ~4x between CPUs here).
    A stage finished by an earlier invocation takes ~0 s in a resumed one."""

    def __init__(self, path: Path, budget: str):
        import datetime
        import os

        import torch

        from speculators_kit.cpu_runtime import cpu_name

        self.path, self.t0 = path, time.monotonic()
        self.earlier = _earlier_runs(path)
        self.entry = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      "budget": budget, "cpu": cpu_name(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
                      "stages_s": {}}

    @contextmanager
    def __call__(self, stage: str):
        t = time.monotonic()
        yield
        self.entry["stages_s"][stage] = round(time.monotonic() - t, 1)
        self.entry["total_s"] = round(time.monotonic() - self.t0, 1)
        log(f"{stage}: {self.entry['stages_s'][stage] / 60:.1f} min")
        self._save()

    def _save(self) -> None:
        from speculators_kit.core.store import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"runs": [*self.earlier, self.entry]})

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in self.entry["stages_s"].items())
        return (f"Wall time of this run: {self.entry['total_s'] / 60:.1f} min ({stages}; "
                f"{self.entry['cpu_capability']}, {self.entry['cores']} cores), in {self.path}\n")


def _earlier_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["runs"])
    except (ValueError, KeyError, TypeError):  # a log is not worth stopping the pipeline for
        path.replace(path.with_name(path.name + ".unreadable"))
        log(f"{path} was unreadable: moved to {path.name}.unreadable, starting a new one")
        return []


def check_earlier_stages(out: Path, target: Path, stores: dict[str, dict], trained: list[str]) -> None:
    """Stages under out that another --budget or --gsm8k made are neither done nor resumable: a
    store would keep its answers, a training would be evaluated or continued as if it were this
    one's. All of them are named at once, with a fix quickstart can take (it has no --overwrite)."""
    from speculators_kit.datagen.run import build_manifest
    from speculators_kit.datagen.writer import setup_differences
    from speculators_kit.schema import KINDS, validate

    stale = {}  # path -> why
    for suffix, data in stores.items():
        cfg = validate(KINDS["datagen"], data, f"datagen{suffix}")
        differences = setup_differences(Path(cfg.output.dir), build_manifest(cfg, target))
        if differences:
            stale[cfg.output.dir] = "; ".join(differences)
    resolved = out / "train" / "resolved_config.json"
    before = json.loads(resolved.read_text())["data"]["stores"] if resolved.is_file() else None
    if before is not None and sorted(map(_real, before)) != sorted(map(_real, trained)):
        stale[str(out / "train")] = f"trained on the stores {before}, this budget trains on {trained}"
    elif stale and before is not None:
        stale[str(out / "train")] = "trained on the stores above"
    if not stale:
        return
    if (out / "eval").exists():
        stale[str(out / "eval")] = "measured that training's draft"
    raise SpecKitError(f"{out} holds stages made with other settings (another --budget, --gsm8k or speckit version): "
                       + ", ".join(f"{path} ({why})" for path, why in stale.items())
                       + f". Give another --out, or delete them to make them again here: rm -r {' '.join(stale)}")


def _real(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def serve_commands(draft: Path, k: int) -> str:
    from speculators_kit.target.embedded import prepare

    spec = f'{{"method":"eagle3","model":"{draft}","num_speculative_tokens":{k}}}'
    return (f"Serve it (GPU machine):  vllm serve {prepare(TARGET)} --speculative-config '{spec}'\n"
            f"On this CPU machine:     speckit serve {prepare(TARGET)} --speculative-config '{spec}'")
