"""Other processes' CPU share over a timed window, read from the real machine: a busy process
outside the measured tree shows up as about one core, the same process inside it does not."""

import subprocess
import sys
import time

from speculators_kit.eval import cpu_share

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"


def test_a_busy_process_counts_only_outside_the_measured_tree():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"])
    busy = subprocess.Popen([sys.executable, "-c", SPIN])  # a child of this process, not of `idle`
    try:
        time.sleep(0.5)  # past the interpreter's start
        mine, idles = cpu_share.snapshot(), cpu_share.snapshot(idle.pid)
        time.sleep(2.0)
        mine_after, idle_after = cpu_share.snapshot(), cpu_share.snapshot(idle.pid)
    finally:
        busy.wait()
        idle.kill()
        idle.wait()
    seen_from_idle = cpu_share.other_cores(idles, idle_after)
    seen_from_me = cpu_share.other_cores(mine, mine_after)
    # the spinning process ran on ~1 core (less when the machine is loaded): only `idle`'s
    # window counts it as another process
    assert mine_after.tree - mine.tree > 0.5
    assert seen_from_idle - seen_from_me > 0.4
    assert seen_from_me >= 0.0


def test_timing_without_snapshots_says_not_recorded():
    t = cpu_share.timing(None, None, time.time())
    assert t["other_cpu_cores"] is None and t["started"].endswith("UTC")
