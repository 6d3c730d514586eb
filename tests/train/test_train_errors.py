"""Bad training configs: exit 1, one line naming the problem and the fix, no output written."""

import json
import re
import shutil

import pytest

from speculators_kit.cli import main
from speculators_kit.core.store import MANIFEST, StoreManifest, StoreReader, write_json_atomic
from speculators_kit.datagen.writer import StoreWriter


def fails(capsys, cfg, tmp_path, expected):
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(expected, err[0]), err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sections, expected", [
    ({"optim": {"lr": 1e-3, "warmup": 5}}, r"unknown key 'optim.warmup' \(allowed here: .*warmup_steps"),
    ({"deepspeed": {"zero_stage": 4}}, r"deepspeed.zero_stage: Input should be less than or equal to 2"),
    ({"optim": {"lr": 1e-3, "muon_lr": 0.05}}, r"optim.muon_lr applies to optim.kind muon only"),
    ({"optim": {"kind": "muon", "grad_clip": 0.5}}, r"optim.grad_clip does not apply to optim.kind muon"),
    ({"deepspeed": {"zero_stage": 1, "train_batch_size": 8}}, r"deepspeed.train_batch_size is derived"),
    ({"deepspeed": {"zero_optimization": {"stage": 3}}}, r"zero_optimization.stage is set by deepspeed.zero_stage"),
    ({"precision": "fp16"}, r"precision: Input should be 'auto', 'bf16' or 'fp32'"),
    ({"draft": {"draft_vocab_size": 300}}, r"draft_vocab_size 300 is larger than the target vocab 256"),
    ({"loss": {"ttt_steps": 2, "step_weights": [1.0]}}, r"step_weights has 1 entries for ttt_steps 2"),
    ({"draft": {"arch": "eagle", "draft_vocab_size": None, "moe": {"experts": 2}}}, r"MoE draft layers .* need draft.arch eagle3"),
    ({"draft": {"arch": "hass", "draft_vocab_size": None, "norm_output": True}}, r"draft.norm_output applies to draft.arch eagle3 only"),
    ({"draft": {"norm_before_fc": True, "fc_norm": True}}, r"norm_before_fc and draft.fc_norm .* set one of them"),
    ({"draft": {"arch": "eagle", "draft_vocab_size": None, "train_lm_head": True}}, r"draft.train_lm_head applies to draft.arch eagle3 only"),
])
def test_bad_config(train_config, capsys, tmp_path, sections, expected):
    fails(capsys, train_config(**sections), tmp_path, expected)


def empty_store(path, fingerprint, layer_ids, vocab=256):
    StoreWriter(path, StoreManifest(target_fingerprint=fingerprint, target_name="x", num_target_layers=4,
                                    layer_ids=layer_ids, dtype="fp32", hidden_size=64, vocab_size=vocab))
    return path


def test_store_problems(train_config, capsys, tmp_path, tiny_store, tiny_targets):
    from speculators_kit.core.fingerprint import target_fingerprint

    cfg = train_config(target={"path": str(tiny_targets["qwen3"])})
    fails(capsys, cfg, tmp_path, r"store .* was made from another target .*same target")
    fp = target_fingerprint(tiny_targets["llama"])
    empty = empty_store(tmp_path / "empty", fp, [1, 2, 4])
    fails(capsys, train_config(data={"stores": [str(empty)]}), tmp_path, r"store .*empty.* is empty: run speckit datagen")
    last_only = empty_store(tmp_path / "last", fp, [4])
    cfg = train_config(data={"stores": [str(tiny_store), str(last_only)]})
    fails(capsys, cfg, tmp_path, r"holds layers \[4\] but .* holds \[1, 2, 4\]")
    fails(capsys, train_config(data={"stores": [str(tmp_path / "nope")]}), tmp_path,
          r"store .*nope does not exist \(run `speckit datagen`")
    twice = [str(tiny_store), str(tiny_store) + "/./"]  # one store, two spellings: every sample counted twice
    fails(capsys, train_config(data={"stores": twice}), tmp_path, r"data.stores lists the store .* twice .*list each store once")
    assert StoreReader(tiny_store).manifest.complete is True  # datagen finished it
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_store, unfinished)
    m = StoreReader(unfinished).manifest.model_copy(update={"complete": False})  # as a running datagen leaves it
    write_json_atomic(unfinished / MANIFEST, m.model_dump())
    fails(capsys, train_config(data={"stores": [str(tiny_store), str(unfinished)]}), tmp_path,
          r"store .*unfinished is unfinished \(24 samples so far\).*re-run the same datagen command")


def test_aux_layers_missing_from_the_store(train_config, capsys, tmp_path, tiny_llama):
    """A store captured with only the last layer cannot feed an EAGLE-3 head."""
    (tmp_path / "q.jsonl").write_text(json.dumps({"q": "one and two"}) + "\n")
    dg = tmp_path / "dg.yaml"
    dg.write_text(json.dumps({"target": {"path": str(tiny_llama)},
                              "data": {"path": str(tmp_path / "q.jsonl"), "prompt_field": "q"},
                              "regenerate": {"enabled": True, "max_new_tokens": 8},
                              "capture": {"backend": "hf", "layers": [4], "dtype": "fp32"},
                              "output": {"dir": str(tmp_path / "last")}}))
    assert main(["datagen", str(dg)]) == 0
    capsys.readouterr()
    cfg = train_config(data={"stores": [str(tmp_path / "last")], "eval_fraction": 0.0})
    fails(capsys, cfg, tmp_path, r"stores hold only the last layer; EAGLE-3 needs aux layers")


def test_resume_without_a_checkpoint(train_config, capsys, tmp_path):
    assert main(["train", str(train_config()), "--resume"]) == 1
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_training_says_when_omp_num_threads_leaves_cores_idle(monkeypatch):
    import os

    import torch

    from speculators_kit.train.recipe import _threads_note

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        note = _threads_note(world=1)
    finally:
        torch.set_num_threads(before)
    assert "1 CPU thread(s) per process" in note
    if (os.cpu_count() or 1) > 1:
        assert "OMP_NUM_THREADS=1 leaves" in note and "cores idle" in note


def test_eagle3_norm_flags_resolve():
    """Unset: the speculators trainer's placement; fc_norm replaces norm_before_fc; set wins."""
    from speculators_kit.schema import DraftSection, eagle3_norms

    assert eagle3_norms(DraftSection()) == {"norm_before_fc": True, "fc_norm": False,
                                            "norm_before_residual": True, "norm_output": True}
    assert eagle3_norms(DraftSection(fc_norm=True))["norm_before_fc"] is False
    assert eagle3_norms(DraftSection(norm_output=False))["norm_output"] is False
    DraftSection(arch="hass")  # unset flags do not trip the eagle3-only check


def test_resume_checks_the_sample_split_when_the_checkpoint_recorded_it(tmp_path):
    from speculators_kit.core.errors import SpecKitError
    from speculators_kit.train.checkpoint import check_resumable

    base = {"draft": {"arch": "eagle3"}, "batches": {"seed": 0}}
    now = base | {"samples": {"stores": ["/a", "/b"], "eval_fraction": 0.05}}
    check_resumable({"identity": base}, now, tmp_path)  # written before the split was recorded
    check_resumable({"identity": now}, now, tmp_path)
    before = base | {"samples": {"stores": ["/a"], "eval_fraction": 0.05}}
    with pytest.raises(SpecKitError, match=r"run changed \(samples.stores: checkpoint \['/a'\], now \['/a', '/b'\]\)"):
        check_resumable({"identity": before}, now, tmp_path)
    with pytest.raises(SpecKitError, match=r"\(batches.seed: checkpoint 1, now 0\)"):  # older keys stay required
        check_resumable({"identity": base | {"batches": {"seed": 1}}}, now, tmp_path)


@pytest.mark.parametrize("text, expected", [
    (None, r"--hostfile .*hosts does not exist \(DeepSpeed would train on this machine alone\)"),
    ("# two machines\n", r"lists no host: one 'HOST slots=N' line per machine"),
    ("worker-1 slots=2\nworker-2 2\n", r"line 2: 'worker-2 2' is not 'HOST slots=N'"),
    ("worker-1 slots=2\nworker-1 slots=4\n", r"line 2: worker-1 is listed twice"),
    # DeepSpeed's launcher checks only the first host, with a traceback
    ("no-such-host.invalid slots=2\n", r"(no-such-host.invalid not reachable by passwordless ssh|ssh is not installed)"),
])
def test_a_hostfile_deepspeed_would_ignore_or_choke_on(train_config, capsys, tmp_path, text, expected):
    hostfile = tmp_path / "hosts"
    if text is not None:
        hostfile.write_text(text)
    assert main(["train", str(train_config()), "--hostfile", str(hostfile), "--nproc", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_rank_error_is_said_once_as_the_last_line(train_config, tmp_path):
    """--nproc 2: each rank printed it, among DeepSpeed's launcher's lines, the last of which
    said `exits with return code = 1`."""
    from tests.train.conftest import speckit

    result = speckit("train", train_config(data={"stores": [str(tmp_path / "nope")]}), "--nproc", 2)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1 and re.match(r"error: store .*nope does not exist", err[-1]), err[-5:]
    assert sum("nope does not exist" in line for line in err) == 1, err
    assert not (tmp_path / "run").exists()


def test_ranks_that_disagree_are_each_named(tmp_path):
    from speculators_kit.train.launch import _rank_errors

    assert _rank_errors(tmp_path) == ""
    (tmp_path / "rank-0.txt").write_text("store x is broken")
    (tmp_path / "rank-1.txt").write_text("store x is broken")
    assert _rank_errors(tmp_path) == "store x is broken"
    (tmp_path / "rank-1.txt").write_text("out of memory")
    assert _rank_errors(tmp_path) == "rank 0: store x is broken; rank 1: out of memory"
