"""The socket folder speckit and its vLLM plugin give vLLM's engines (vllm_env.private_ipc_dir)."""

import os
import tempfile
import uuid

from speculators_kit.vllm_env import SUN_PATH_MAX, ipc_parent, private_ipc_dir


def test_the_folder_goes_to_tmp_when_tmpdir_is_too_long_for_a_socket_path(tmp_path, monkeypatch):
    short = tmp_path.parent.parent  # /tmp/pytest-of-USER: short enough
    long = tmp_path / ("x" * 60)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    assert ipc_parent() == str(short)
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    assert ipc_parent() == "/tmp"


def test_each_socket_vllm_binds_in_the_folder_fits(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_RPC_BASE_PATH", raising=False)
    for parent in (tmp_path.parent.parent, tmp_path / ("x" * 60)):
        parent.mkdir(exist_ok=True)
        monkeypatch.setattr(tempfile, "tempdir", str(parent))
        private_ipc_dir()
        folder = os.environ.pop("VLLM_RPC_BASE_PATH")
        assert os.path.isdir(folder) and os.path.basename(folder).startswith("speckit-ipc-")
        assert len(f"{folder}/{uuid.uuid4()}") <= SUN_PATH_MAX  # what vLLM binds
        os.rmdir(folder)


def test_a_folder_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", "/srv/sockets")
    private_ipc_dir()
    assert os.environ["VLLM_RPC_BASE_PATH"] == "/srv/sockets"
