"""A rank's exit (train/rank.py's `end`) skips the interpreter's teardown, so it must itself
keep what a normal exit does: the exit code, Python's exit handlers, buffered output."""

import os
import subprocess
import sys


def test_a_rank_exits_with_its_code_after_the_exit_handlers_and_flushed_output(tmp_path):
    script = ("import atexit\n"
              "from speculators_kit.train.rank import end\n"
              f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').write('yes'))\n"
              "print('the result line', end='')\n"  # no newline: left in the buffer of a pipe
              "end(3)\n"
              "print('after')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "the result line"
    assert (tmp_path / "ran").read_text() == "yes"
