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


@contextlib.contextmanager
def small_disk(path: Path, kib: int):
    """A real filesystem of `kib` KiB at `path` (tmpfs; needs root, as CI has), to fill up: a
    monkeypatched write error would not be what the libraries really raise (safetensors reports
    a full disk as its own SafetensorError, not an OSError)."""
    import subprocess

    import pytest

    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill_disk(folder: Path, leave_bytes: int) -> Path:
    """A ballast file that leaves `leave_bytes` free on `folder`'s filesystem."""
    import os

    st = os.statvfs(folder)
    ballast = folder / "ballast"
    ballast.write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - leave_bytes, 0))
    return ballast
