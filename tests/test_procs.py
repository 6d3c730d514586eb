"""`speckit` killed while a child runs: the child's own children (vLLM's engine and workers,
DeepSpeed's ranks) go too, even when speckit gets no chance to clean up (SIGKILL)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speculators_kit.procs import call

CHILD = ("import subprocess, sys, time; "
         "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
         "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")


def stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a dead parent to reap it."""
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _kill_grandchild(pid_file: Path) -> None:
    """A failed test's leftover, which would slow every later test on the machine."""
    if pid_file.is_file() and pid_file.read_text():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}


@pytest.mark.parametrize("how", list(SIGNALS))
def test_killing_speckit_ends_the_grandchildren(tmp_path, how):
    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys\n"
        # Ctrl-C as from a terminal: run as a shell's background job (`pytest ... &`), the test
        # inherits SIGINT ignored, and Python then leaves it ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from speculators_kit.cli import _exit_on_sigterm\n"
        "from speculators_kit.procs import call\n"
        "_exit_on_sigterm()\n"
        f"call([sys.executable, '-c', {CHILD!r}, {str(pid_file)!r}])\n")])
    try:
        assert wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 30)
        grandchild = int(pid_file.read_text())
        assert alive(grandchild)
        parent.send_signal(SIGNALS[how])
        assert parent.wait(timeout=30) != 0
        assert wait_for(lambda: not alive(grandchild), 10), "the grandchild outlived speckit"
    finally:
        parent.kill()
        _kill_grandchild(pid_file)


def children() -> set[int]:
    pids = (int(p.name) for p in Path("/proc").glob("[0-9]*"))
    return {pid for pid in pids if (fields := stat(pid)) is not None and int(fields[1]) == os.getpid()}


def test_a_finished_child_leaves_no_process_behind():
    before = children()
    assert call([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert children() <= before, "the guard (or the child) outlived call()"


def test_on_signal_lets_the_child_stop_by_itself_and_a_second_signal_kills_it(tmp_path):
    """`speckit train --nproc N`: the first Ctrl-C asks the ranks to save and stop; the second
    one must still end everything at once."""
    pid_file, asked = tmp_path / "grandchild.pid", tmp_path / "asked"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from speculators_kit.procs import call\n"
        f"ask = lambda proc, signum: open({str(asked)!r}, 'w').write(signal.Signals(signum).name)\n"
        f"call([sys.executable, '-c', {CHILD!r}, {str(pid_file)!r}], on_signal=ask)\n")])
    try:
        assert wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 30)
        grandchild = int(pid_file.read_text())
        parent.send_signal(signal.SIGINT)
        assert wait_for(asked.is_file, 10) and asked.read_text() == "SIGINT"
        time.sleep(0.5)
        assert parent.poll() is None and alive(grandchild), "the first signal stopped it"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) != 0
        assert wait_for(lambda: not alive(grandchild), 10), "the grandchild outlived the second signal"
    finally:
        parent.kill()
        _kill_grandchild(pid_file)
