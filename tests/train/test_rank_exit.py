"""A finished rank lets its process group go before exit, and its exit (train/rank.py's `end`)
skips the interpreter's teardown, so it must itself keep what a normal exit does: the exit
code, Python's exit handlers, buffered output."""

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


def test_the_process_group_is_gone_after_destroy_even_once_torch_distributed_nn_is_imported():
    """Before, DeepSpeed's later import of torch.distributed.nn kept the group alive as its
    functions' `group` default, into the interpreter's teardown, where a rank aborted."""
    script = ("import gc, weakref\n"
              "import torch.distributed as dist\n"
              "from speculators_kit.train.ds import init_distributed\n"
              "init_distributed()\n"
              "import torch.distributed.nn\n"  # what DeepSpeed does once training runs
              "group = weakref.ref(dist.distributed_c10d._get_default_group())\n"
              "dist.destroy_process_group()\n"
              "gc.collect()\n"
              "print('alive' if group() is not None else 'gone')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", script], env=env | {"DS_ACCELERATOR": "cpu"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "gone"


def test_training_in_this_process_leaves_no_group_behind(train_config):
    """`speckit train` without --nproc and the quickstart train in their own process; the
    quickstart used to keep its group to the end, into the interpreter's teardown."""
    script = ("import sys\n"
              "import torch.distributed as dist\n"
              "from speculators_kit.schema import load_config\n"
              "from speculators_kit.train.launch import train_here\n"
              "result = train_here(load_config(sys.argv[1], 'train', []), False)\n"
              "print(result['step'], dist.is_initialized())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", script, str(train_config(train={"max_steps": 2}))],
                          env=env | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "2 False"
