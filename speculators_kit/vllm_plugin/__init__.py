"""vLLM plugin entry point (`vllm.general_plugins`).

vLLM calls `register()` in every process it starts (front end, engine core, workers), so it
must be idempotent and cheap. Standard EAGLE-3 drafts load in stock vLLM without it; the
plugin issue adds our extra architectures and proposer features here.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
