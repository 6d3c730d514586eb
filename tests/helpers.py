"""Small builders shared by tests."""

import contextlib
import shutil
import tempfile
from pathlib import Path

from speculators_kit.core.build import draft_config_for_target, init_draft
from speculators_kit.core.format import save_draft


def make_draft(target, out, arch="eagle3", layers=1, init="random", seed=0, **kw):
    cfg = draft_config_for_target(target, arch, layers, **kw)
    head = init_draft(cfg, target, init, seed)
    save_draft(head, out, target_dir=target, overwrite=True)
    return head


@contextlib.contextmanager
def short_tmpdir():
    """A TMPDIR short enough to hold vLLM's socket folder (vllm_env.ipc_parent): under pytest's
    own tmp_path the folder would move to /tmp, and a test of what is left in TMPDIR would pass
    whatever vLLM left."""
    path = Path(tempfile.mkdtemp(prefix="sk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
