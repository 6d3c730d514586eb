"""Make `transformers.AutoConfig/AutoModel.from_pretrained(draft_dir)` understand our drafts.

Speculator-format config.json files have no `model_type` (that is how vLLM recognises
them), so transformers cannot dispatch on them by itself. We register a config class and
wrap `AutoConfig.from_pretrained` to route local speculator-format folders to it. To keep
`import speculators_kit` cheap this runs only once transformers is imported anyway: right
away if it already is, else from a one-shot import hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_done = False


def install() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _TransformersFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersFinder())


class _TransformersFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def _register() -> None:
    global _done
    if _done:
        return
    _done = True
    from speculators_kit import hf_compat

    hf_compat.register()
