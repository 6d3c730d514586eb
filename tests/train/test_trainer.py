"""DeepSpeed training on a tiny store: ZeRO stages and process counts agree, resume replays the
same curve, checkpoints load as drafts, bad configs fail with one clear line."""

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from speculators_kit.cpu_runtime import find_iomp, find_tcmalloc
from speculators_kit.train.ds import SHM_DIR, native_bf16
from tests.train.conftest import losses, metrics, speckit

pytestmark = pytest.mark.slow


def test_zero_stages_and_process_counts_give_the_same_curve(train_config, tmp_path):
    """2 processes x 1 micro-batch see the same batches as 1 process x grad_accum 2; ZeRO only
    changes where optimizer state lives. Measured: identical to the last bit; allowed: 1e-6."""
    curves = {}
    for nproc, accum in ((1, 2), (2, 1)):
        for stage in (0, 1, 2):
            out = tmp_path / f"run-{nproc}-{stage}"
            cfg = train_config(f"{nproc}-{stage}.yaml", train={"grad_accum": accum, "save_every": 100},
                               deepspeed={"zero_stage": stage}, output={"dir": str(out)})
            result = speckit("train", cfg, "--nproc", nproc)
            assert result.returncode == 0, result.stderr[-3000:]
            curves[(nproc, stage)] = losses(out)
    reference = curves[(1, 0)]
    assert len(reference) == 6 and reference[6] < reference[1]
    for key, curve in curves.items():
        assert curve.keys() == reference.keys()
        for step, loss in curve.items():
            assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), (key, step)


def _allreduce_segments() -> set[str]:
    return {p.name for p in Path(SHM_DIR).glob("deepspeed_allreduce_buffer_*")}


def test_two_ranks_leave_no_shared_memory_behind(train_config, tmp_path):
    """DeepSpeed's CPU all-reduce left one 66 MB /dev/shm segment per rank after every run, also
    a clean one: RAM that stayed taken until reboot."""
    before = _allreduce_segments()
    result = speckit("train", train_config(train={"max_steps": 2}), "--nproc", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _allreduce_segments() - before == set()


def test_resume_continues_the_same_curve(train_config, tmp_path):
    """Interrupted after the step-3 checkpoint (its later state removed), --resume re-runs steps
    4-6 mid-epoch (packed batches): losses equal the uninterrupted run within 1e-6 (measured:
    bit-identical)."""
    from speculators_kit.core.format import read_config

    cfg = train_config(data={"packing": True})
    full = speckit("train", cfg)
    assert full.returncode == 0, full.stderr[-3000:]
    if os.environ.get("SPECKIT_CPU_PRELOAD") != "0":  # the CLI restarted itself with what it finds
        found = [name for lib, name in ((find_tcmalloc(), "tcmalloc"), (find_iomp(), "Intel OpenMP")) if lib]
        if found:
            assert f"per process with {' and '.join(found)}" in full.stderr, full.stderr[-3000:]
    uninterrupted = losses(tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000003", "step-00000006"]
    assert read_config(ckpts / "step-00000003" / "draft").speculators_kit.provenance["step"] == 3
    shutil.rmtree(ckpts / "step-00000006")  # as if the run had died during step 4
    resumed = speckit("train", cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 3" in resumed.stderr
    again = losses(tmp_path / "run")
    assert again.keys() == uninterrupted.keys()
    for step in again:
        assert again[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=1e-7)
    # a changed architecture cannot load that state
    changed = speckit("train", cfg, "--resume", "--set", "draft.num_layers=2")
    assert changed.returncode == 1 and "cannot resume" in changed.stderr
    assert "(draft.num_layers: checkpoint 1, now 2)" in changed.stderr
    # nor can other batching: it would replay other data
    unpacked = speckit("train", cfg, "--resume", "--set", "data.packing=false")
    assert unpacked.returncode == 1 and "cannot resume" in unpacked.stderr
    assert "(batches.packing: checkpoint True, now False)" in unpacked.stderr
    # nor another split: samples held out so far could be trained on
    resplit = speckit("train", cfg, "--resume", "--set", "data.eval_fraction=0.5")
    assert resplit.returncode == 1 and "cannot resume" in resplit.stderr
    assert "(samples.eval_fraction: checkpoint 0.2, now 0.5)" in resplit.stderr


def test_resume_may_extend_the_schedule_but_not_change_the_optimizer(train_config, tmp_path):
    """The optimizer's lr, betas and weight decay come back from the checkpoint: a changed one is
    refused, not silently ignored. A longer run (or another loss) is allowed; the console lists
    what changed and where the LR jumps."""
    cfg = train_config()
    assert speckit("train", cfg).returncode == 0
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000006")
    for changed in ("optim.lr=0.01", "optim.weight_decay=0.1", "optim.betas=[0.8,0.99]"):
        result = speckit("train", cfg, "--resume", "--set", changed)
        assert result.returncode == 1 and "cannot resume" in result.stderr, (changed, result.stderr[-2000:])
        assert f"(optimizer.{changed.split('=')[0].split('.')[1]}: checkpoint" in result.stderr, result.stderr[-2000:]
    same = speckit("train", cfg, "--resume", "--set", "train.max_steps=6")  # nothing changed: no note
    assert same.returncode == 0 and "settings changed" not in same.stderr, same.stderr[-3000:]
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000006")
    longer = speckit("train", cfg, "--resume", "--set", "train.max_steps=12",
                     "--set", "loss.step_weights=decay")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "settings changed since the checkpoint: loss.step_weights 'uniform' -> 'decay', " \
           "train.max_steps 6 -> 12;" in longer.stderr
    assert "from step 3 the LR follows the new schedule" in longer.stderr
    lrs = {r["step"]: r["lr"] for r in metrics(tmp_path / "run") if "lr" in r}
    assert sorted(lrs) == list(range(1, 13)) and lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert lrs[4] > lrs[3]  # the longer cosine sits higher at step 4 than the old one at step 3


def test_bf16_moe_two_layer_checkpoint_is_a_loadable_draft(train_config, tmp_path, tiny_llama, tiny_store):
    import torch

    from speculators_kit.core.format import load_draft, shared_target_weight
    from speculators_kit.core.store import StoreReader

    norms = {"norm_before_fc": True, "norm_before_residual": True, "norm_output": True}
    cfg = train_config(draft={"arch": "eagle3", "num_layers": 2, "draft_vocab_size": 64,
                              "init": "target-last-layer", "moe": {"experts": 4, "top_k": 2},
                              "num_speculative_tokens": 4, **norms},
                       precision="bf16", proposer={"early_exit_threshold": 0.25})
    result = speckit("train", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    head = load_draft(tmp_path / "run" / "draft", target_dir=tiny_llama)
    assert len(head.layers) == 2 and head.config.speculators_kit.moe.num_experts == 4
    assert all(getattr(head.config, key) for key in norms) and head.input_norm is not None
    evals = [r for r in metrics(tmp_path / "run") if "tau" in r]
    assert evals and all(r["k"] == 4 and len(r["accept_per_pos"]) == 4 for r in evals)  # serving's k, not ttt_steps
    kept = set((head.d2t + torch.arange(64)).tolist())
    target_rows = shared_target_weight(tiny_llama, "lm_head.weight")[head.d2t + torch.arange(64)]
    torch.testing.assert_close(head.lm_head.weight, target_rows.float())  # frozen: still the target's
    answered = set(StoreReader(tiny_store).token_freq().nonzero().flatten().tolist())
    assert answered <= kept and 2 in kept  # every answer token, and the end-of-turn token
    assert head.config.speculators_kit.provenance["config"]["precision"] == "bf16"
    assert head.config.speculators_kit.proposer.early_exit_threshold == 0.25  # the serving default
    assert ("emulated" in result.stderr) != native_bf16()  # forced bf16 on an AVX2 CPU is flagged


def test_auto_precision_trains_in_what_the_hardware_computes(train_config, tmp_path, tiny_llama):
    from speculators_kit.core.format import load_draft

    cfg = train_config(precision="auto", train={"max_steps": 2})
    result = speckit("train", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = "bf16" if native_bf16() else "fp32"
    assert f"ZeRO 2, {chosen}" in result.stderr and "emulated" not in result.stderr
    # warmup 2 of 2 steps: said, as the learning rate never decays
    assert "optim.warmup_steps 2 >= train.max_steps 2: the learning rate only warms up (to 1 x" in result.stderr
    draft = load_draft(tmp_path / "run" / "draft", target_dir=tiny_llama)
    assert draft.config.speculators_kit.provenance["config"]["precision"] == chosen
    resumed = speckit("train", cfg, "--resume", "--set", "train.max_steps=3")  # auto resumes auto
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "optim.warmup_steps" not in resumed.stderr


def test_eagle1_and_hass_train(train_config, tmp_path, tiny_llama):
    from speculators_kit.core.format import load_draft

    for arch in ("eagle", "hass"):
        out = tmp_path / arch
        cfg = train_config(f"{arch}.yaml", draft={"arch": arch, "draft_vocab_size": None},
                           train={"max_steps": 2}, output={"dir": str(out)})
        result = speckit("train", cfg)
        assert result.returncode == 0, result.stderr[-3000:]
        assert load_draft(out / "draft", target_dir=tiny_llama).config.arch == "eagle"


def test_store_from_a_moe_target_trains_unchanged(tmp_path, tiny_targets, train_config):
    from speculators_kit.cli import main

    moe = tiny_targets["qwen3_moe"]
    (tmp_path / "q.jsonl").write_text("".join(f'{{"q": "add {i} to {i + 4}"}}\n' for i in range(8)))
    dg = tmp_path / "dg.yaml"
    dg.write_text(yaml.safe_dump({
        "target": {"path": str(moe)}, "data": {"path": str(tmp_path / "q.jsonl"), "prompt_field": "q"},
        "regenerate": {"enabled": True, "max_new_tokens": 12},
        "capture": {"backend": "hf", "layers": "auto", "dtype": "bf16"}, "output": {"dir": str(tmp_path / "s")}}))
    assert main(["datagen", str(dg)]) == 0
    cfg = train_config(target={"path": str(moe)}, data={"stores": [str(tmp_path / "s")], "eval_fraction": 0.0},
                       train={"max_steps": 2})
    result = speckit("train", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "draft" / "config.json").is_file()


def test_muon_trains_on_every_zero_stage_and_resumes(train_config, tmp_path):
    """optim.kind muon: DeepSpeed's Muon on the draft's weight matrices. ZeRO 0 (Muon in the
    optimizer's step), ZeRO 2 (Muon before the update is split) and ZeRO 2 over 2 processes (each
    holding half of some matrices) give one curve, another than AdamW's; a resume replays it;
    switching the optimizer is refused."""
    curves = {}
    runs = (("adamw", {}, 2, 1), ("muon0", {"kind": "muon"}, 0, 1), ("muon2", {"kind": "muon"}, 2, 1),
            ("muon2x2", {"kind": "muon"}, 2, 2))
    for name, optim, stage, nproc in runs:
        cfg = train_config(f"{name}.yaml", optim=optim, deepspeed={"zero_stage": stage},
                           train={"grad_accum": 3 - nproc}, output={"dir": str(tmp_path / name)})
        result = speckit("train", cfg, "--nproc", nproc)
        assert result.returncode == 0, result.stderr[-3000:]
        curves[name] = losses(tmp_path / name)
        if name == "muon2":
            assert "optimizer: Muon on 8 weight matrices" in result.stderr, result.stderr[-3000:]
            muon_cfg = cfg
    muon = curves["muon2"]
    assert muon[6] < muon[1]
    for other in ("muon0", "muon2x2"):
        assert all(muon[s] == pytest.approx(curves[other][s], rel=1e-4) for s in muon), (other, curves[other])
    assert any(abs(muon[s] - curves["adamw"][s]) > 1e-3 for s in muon)
    # logged LRs: one schedule; `lr` is the AdamW one in both runs, Muon's is muon_lr
    rows = {name: [r for r in metrics(tmp_path / name) if "loss" in r] for name in ("adamw", "muon2")}
    assert [r["lr"] for r in rows["muon2"]] == [r["lr"] for r in rows["adamw"]]
    assert "muon_lr" not in rows["adamw"][0]
    assert all(r["muon_lr"] == pytest.approx(r["lr"] * 0.02 / 1e-3) for r in rows["muon2"])
    shutil.rmtree(tmp_path / "muon2" / "checkpoints" / "step-00000006")
    switched = speckit("train", muon_cfg, "--resume", "--set", "optim.kind=adamw")
    assert switched.returncode == 1 and "optimizer.kind: checkpoint 'muon'" in switched.stderr
    resumed = speckit("train", muon_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = losses(tmp_path / "muon2")
    assert all(again[s] == pytest.approx(muon[s], rel=1e-6, abs=1e-7) for s in muon)
    # a resume that changes the schedule reads the Muon run's recorded settings back
    longer = speckit("train", muon_cfg, "--resume", "--set", "train.max_steps=8")
    assert longer.returncode == 0 and "train.max_steps 6 -> 8" in longer.stderr, longer.stderr[-3000:]


def test_weight_average_is_what_evals_and_drafts_use_and_it_resumes(train_config, tmp_path, tiny_llama):
    """optim.ema: evaluations report the average and the raw weights; the saved draft holds the
    average (ema.pt's); a resume restores it, so the run ends with the same
    average; changing the decay on resume is refused."""
    import torch

    from speculators_kit.core.format import load_draft

    cfg = train_config(optim={"ema": 0.9})
    assert speckit("train", cfg).returncode == 0
    run = tmp_path / "run"
    evals = [r for r in metrics(run) if "tau" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert evals[0]["eval_loss"] == evals[0]["eval_loss_raw"]  # nothing averaged yet
    assert evals[-1]["eval_loss"] != pytest.approx(evals[-1]["eval_loss_raw"], rel=1e-6)
    ckpt = run / "checkpoints" / "step-00000006"
    average = torch.load(ckpt / "ema.pt", weights_only=True)
    assert average["updates"] == 6
    draft = load_draft(run / "draft", tiny_llama).state_dict()
    scale = 1 / (1 - 0.9**6)  # bias-corrected
    trained = {name.removeprefix("head."): value * scale for name, value in average["total"].items()}
    assert trained and all(torch.equal(draft[name], value) for name, value in trained.items())
    shutil.copy(ckpt / "ema.pt", tmp_path / "uninterrupted.pt")
    shutil.rmtree(ckpt)
    changed = speckit("train", cfg, "--resume", "--set", "optim.ema=0.5")
    assert changed.returncode == 1 and "(optimizer.ema: checkpoint 0.9, now 0.5)" in changed.stderr, changed.stderr[-2000:]
    resumed = speckit("train", cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = torch.load(ckpt / "ema.pt", weights_only=True)["total"]
    before = torch.load(tmp_path / "uninterrupted.pt", weights_only=True)["total"]
    assert all(torch.allclose(again[name], before[name], rtol=1e-6, atol=1e-7) for name in before)


@pytest.mark.parametrize("victim, said", [
    ("rank", "a training rank was killed by SIGKILL, and DeepSpeed's launcher stopped the others"),
    ("launcher", "DeepSpeed's launcher was killed by SIGKILL, so speckit stopped the ranks")])
def test_a_killed_rank_or_launcher_is_said_with_the_checkpoint_to_resume_from(train_config, tmp_path,
                                                                              victim, said):
    """The OOM killer takes one rank: DeepSpeed stops the other and says only `exits with return
    code = -9` among the survivor's gloo traceback. It takes the launcher: nothing is said. Either
    way speckit says what happened and the way on, and no rank is left running."""
    import signal
    import time

    import psutil

    from speculators_kit.train.launch import local_ranks

    cfg = train_config(train={"max_steps": 100000, "save_every": 2, "eval_every": 50000, "log_every": 1})
    proc = _start_training(cfg, "--nproc", 2)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(ckpts.glob("step-*/state.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    ranks = local_ranks(proc.pid)
    assert len(ranks) == 2
    launcher = psutil.Process(proc.pid).children()[0]
    (ranks[1] if victim == "rank" else launcher).send_signal(signal.SIGKILL)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {said}"), err[-3000:]
    assert not psutil.wait_procs(ranks, timeout=30)[1], "a rank outlived speckit"
    saved = max(ckpts.glob("step-*/state.json")).parent.name
    assert f"add --resume to the same command to go on from {saved}" in last


def _start_training(cfg, *args):
    """`speckit train` in the background, its stderr piped, to be signalled."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "speculators_kit.cli", "train", str(cfg), *map(str, args)]
    return subprocess.Popen(cmd, env=env | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_saves_the_step_it_stops_at_and_the_run_resumes_from_it(train_config, tmp_path, nproc):
    """Before, Ctrl-C (or SIGTERM) lost every step since the last train.save_every checkpoint;
    with --nproc 2 speckit killed the ranks at once."""
    import signal
    import time

    cfg = train_config(train={"max_steps": 100000, "save_every": 50000, "eval_every": 50000, "log_every": 1})
    proc = _start_training(cfg, "--nproc", nproc)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 4) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, err[-3000:]
    stopped = max(r["step"] for r in metrics(tmp_path / "run") if "loss" in r)
    cause = "SIGINT" if nproc == 1 else "speckit's stop request"
    assert f"stopped by {cause} at step {stopped} of 100000, with a checkpoint of that step" in err, err[-3000:]
    assert err.count("error: stopped by") == 1, err[-3000:]  # one rank says it
    assert "\nerror: stopped by" in err, err[-3000:]  # on its own line, not after the progress bar
    if nproc == 2:
        assert "SIGINT: the 2 ranks stop after this step" in err, err[-3000:]
    assert (tmp_path / "run" / "checkpoints" / f"step-{stopped:08d}").is_dir()
    resumed = speckit("train", cfg, "--resume", "--set", f"train.max_steps={stopped + 2}", "--nproc", nproc)
    assert resumed.returncode == 0 and f"resuming at step {stopped}" in resumed.stderr, resumed.stderr[-3000:]


def test_ctrl_c_while_the_ranks_start_stops_them_before_a_step_with_nothing_saved(train_config, tmp_path):
    """Before, a rank still importing torch died of speckit's SIGUSR1 (the launcher's error lines
    followed), and one past it trained and saved step 1, so the re-run the user stopped for
    needed --resume. Signalled a second after the ranks appear: they are importing then."""
    import signal
    import time

    import psutil

    cfg = train_config(train={"max_steps": 100000, "save_every": 50000, "eval_every": 50000})
    proc = _start_training(cfg, "--nproc", 2)

    def ranks() -> int:
        count = 0
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # the launcher's short-lived helpers
                args = child.cmdline()
                count += "-m" in args and args[args.index("-m") + 1].startswith("speculators_kit.train")
        return count

    deadline = time.monotonic() + 120
    while ranks() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == ("error: stopped by speckit's stop request before the first step: "
                                            "nothing was trained or saved; re-run the same command to start"), err[-3000:]
    assert "return code = -10" not in err, err[-3000:]  # no rank died of SIGUSR1
    assert not (tmp_path / "run" / "checkpoints").exists()
    again = speckit("train", cfg, "--set", "train.max_steps=2", "--nproc", 2)  # the re-run needs no --resume
    assert again.returncode == 0 and (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir(), again.stderr[-3000:]
