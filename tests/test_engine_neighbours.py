"""The warning about other vLLM engines on the cores a new one will use, read from the real
machine: a process titled as vLLM titles its workers (with setproctitle, as vLLM does), outside
this process's tree, pinned to one core. The real engine's case is in tests/e2e/test_serve.py."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speculators_kit import engine_neighbours

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WORKER = """
import os, sys, time, setproctitle
setproctitle.setproctitle("VLLM::Worker")
os.sched_setaffinity(0, {int(sys.argv[1])})
t = time.time()
while time.time() - t < float(sys.argv[2]):
    pass
"""
LAUNCH = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # else run() waits for it
print(p.pid)
"""


@pytest.fixture()
def stranger():
    """(pid, core) of a spinning 'VLLM::Worker' that is not a descendant of this process: its
    launcher exits, so it is re-parented away from pytest, like another user's job."""
    core = max(os.sched_getaffinity(0))  # vLLM pins its busiest thread to the first
    out = subprocess.run([sys.executable, "-c", LAUNCH, WORKER, str(core), "30"], capture_output=True,
                         text=True, check=True)
    pid = int(out.stdout)
    _wait_for_title(pid)
    yield pid, core
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _wait_for_title(pid):
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}/comm").read_text().strip() != "VLLM::Worker":
        assert time.monotonic() < deadline, "the worker did not set its title"
        time.sleep(0.05)
    while engine_neighbours.cpus_of(pid) != {max(os.sched_getaffinity(0))}:  # it pins itself after the title
        assert time.monotonic() < deadline, "the worker did not pin itself"
        time.sleep(0.05)


def test_a_worker_on_our_cores_is_named_with_its_cores_and_load(stranger, monkeypatch):
    pid, core = stranger
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    stream = io.StringIO()
    found = {e["pid"]: e for e in engine_neighbours.warn_if_crowded(stream)}
    assert found[pid]["cores"] == [core]
    assert found[pid]["busy_cores"] > 0.25  # it spins on its core
    warning = stream.getvalue()
    assert f"pid {pid} (cores {core}, busy)" in warning and "VLLM_CPU_OMP_THREADS_BIND" in warning


def test_a_worker_on_other_cores_or_in_our_own_tree_is_not(stranger, monkeypatch):
    pid, core = stranger
    others = sorted(os.sched_getaffinity(0) - {core})
    if not others:
        pytest.skip("one core: nothing to bind elsewhere")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, others)))
    assert pid not in [e["pid"] for e in engine_neighbours.neighbours()]
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    own = subprocess.Popen([sys.executable, "-c", WORKER, str(core), "30"])  # our child: our own engine
    try:
        _wait_for_title(own.pid)
        pids = [e["pid"] for e in engine_neighbours.neighbours()]
        assert pid in pids and own.pid not in pids
    finally:
        own.kill()
        own.wait()


def test_cpu_lists_parse_and_print_as_the_kernel_writes_them():
    assert engine_neighbours.parse_cpu_list("0-2,5|7") == {0, 1, 2, 5, 7}
    assert engine_neighbours._ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_eval_warns_on_the_console_not_only_in_its_runner_log(stranger, tmp_path, capfd):
    """The vLLM runner's output goes to a log file, so `speckit eval` checks before it starts one
    (here a runner given an empty spec, which fails at once)."""
    from speculators_kit.core.errors import SpecKitError
    from speculators_kit.eval.run import _vllm_subprocess

    pid, core = stranger
    with pytest.raises(SpecKitError, match="the vLLM run failed"):
        _vllm_subprocess({}, tmp_path / "target_only.json")
    assert f"pid {pid} (cores {core}, " in capfd.readouterr().err
