import os

# Before torch is imported anywhere: one thread is much faster for tiny ops on this 2-core box.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest


@pytest.fixture(scope="session")
def tiny_targets(tmp_path_factory):
    """Tiny random HF targets by kind: llama, qwen3, qwen3_moe."""
    from speculators_kit.testing.tiny_targets import KINDS, make_tiny_target

    root = tmp_path_factory.mktemp("targets")
    return {kind: make_tiny_target(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def tiny_llama(tiny_targets):
    return tiny_targets["llama"]


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded target (built once into the cache, ~45 s the first time)."""
    from speculators_kit.target.embedded import prepare

    return prepare()


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory, smollm2):
    """200 GSM8K training questions answered by SmolLM2 itself (greedy, 128 new tokens; ~42k
    tokens) and captured through vLLM: the shipped datagen config, smaller. ~9 min on a 2-core
    AVX2 host."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("smollm2") / "store"
    gsm8k = root.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    cmd = [sys.executable, "-m", "speculators_kit.cli", "datagen",
           str(root / "configs" / "datagen" / "smollm2-gsm8k.yaml"),
           "--set", "data.limit=200", "--set", "regenerate.max_new_tokens=128",
           "--set", f"data.path={gsm8k}", "--set", f"output.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def smollm2_trained(smollm2_store, tmp_path_factory):
    """A 1-layer EAGLE-3 draft trained 40 steps (2048 tokens each, ~2 passes) on smollm2_store
    (~3 min on 2 AVX2 cores). Returns the run's output folder (draft/, metrics.jsonl, checkpoints/)."""
    from pathlib import Path

    from tests.train.conftest import speckit

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("trained") / "run"
    sets = [f"data.stores=[{smollm2_store}]", f"output.dir={out}", "train.max_steps=40",
            "train.eval_every=40", "train.save_every=40", "train.micro_batch_tokens=2048",
            "optim.warmup_steps=5", "optim.lr=1e-3", "data.eval_fraction=0.1", "logging.tensorboard=false",
            "draft.init=target-last-layer"]  # it leads random init in short runs (see quickstart.py)
    args = ["train", root / "configs" / "train" / "smollm2-eagle3-1layer.yaml"]
    for s in sets:
        args += ["--set", s]
    # nothing else runs meanwhile, so it gets every core (1 thread: 1.9x the wall time)
    proc = speckit(*args, timeout=1800, threads=os.cpu_count() or 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
