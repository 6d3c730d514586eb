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
