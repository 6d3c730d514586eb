import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_llama):
    """24 short conversations answered (12 tokens) by the tiny Llama, captured with the HF backend."""
    from speculators_kit.cli import main

    tmp = tmp_path_factory.mktemp("tiny_store")
    (tmp / "q.jsonl").write_text("".join(json.dumps({"q": f"sum {i} and {i * 3}"}) + "\n" for i in range(24)))
    cfg = {"target": {"path": str(tiny_llama)},
           "data": {"source": "jsonl", "path": str(tmp / "q.jsonl"), "prompt_field": "q", "max_length": 256},
           "regenerate": {"enabled": True, "max_new_tokens": 24},
           "capture": {"backend": "hf", "layers": [1, 2], "dtype": "fp32"},
           "output": {"dir": str(tmp / "store"), "shard_samples": 8}}
    (tmp / "datagen.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["datagen", str(tmp / "datagen.yaml")]) == 0
    return tmp / "store"


@pytest.fixture()
def train_config(tmp_path, tiny_llama, tiny_store):
    def write(name="train.yaml", **sections):
        cfg = {"target": {"path": str(tiny_llama)},
               "data": {"stores": [str(tiny_store)], "eval_fraction": 0.2, "max_length": 256},
               "draft": {"arch": "eagle3", "num_layers": 1, "draft_vocab_size": 128, "init": "random"},
               "loss": {"kind": "kl", "ttt_steps": 3},
               "optim": {"lr": 1e-3, "warmup_steps": 2},
               "train": {"max_steps": 6, "micro_batch_tokens": 512, "eval_every": 3, "save_every": 3,
                         "log_every": 1},
               "deepspeed": {"zero_stage": 2}, "precision": "fp32",
               "output": {"dir": str(tmp_path / "run")}, "logging": {"tensorboard": False}}
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


def speckit(*args, timeout=900, threads=1):
    """Run the CLI in a fresh process (DeepSpeed's process group must not leak between runs).
    threads > 1 only for a run that has the machine to itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu")
    return subprocess.run([sys.executable, "-m", "speculators_kit.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}
