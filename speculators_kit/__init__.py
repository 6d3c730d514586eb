"""speculators_kit: train, convert and serve EAGLE-style draft models for vLLM.

Importing the package is cheap: vllm, deepspeed and transformers load only when used.
"""

from speculators_kit._hf_hook import install as _install_hf_hook

__version__ = "0.1.0"
__all__ = ["SpeculativeModel", "__version__"]

_install_hf_hook()


def __getattr__(name):
    if name == "SpeculativeModel":
        from speculators_kit.api import SpeculativeModel

        return SpeculativeModel
    raise AttributeError(f"module 'speculators_kit' has no attribute {name!r}")
