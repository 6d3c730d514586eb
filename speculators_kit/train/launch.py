"""Start training: in this process for one process, else through DeepSpeed's launcher
(`--nproc N` processes on this machine, or every host of a DeepSpeed hostfile)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from speculators_kit import cpu_runtime, procs
from speculators_kit.core.errors import SpecKitError

RANK_MODULE = "speculators_kit.train.rank"  # the module each rank runs
RANK_ERRORS = "SPECKIT_RANK_ERRORS"  # the folder where launched ranks leave their error for speckit


def train_here(cfg, resume: bool) -> dict:
    """Train in this process (`speckit train` without --nproc, and the quickstart), then end its
    one-member group, as each launched rank does (train/recipe.py's main), also after an error:
    a group left to the interpreter's teardown can abort the process there (see ds.init_distributed)."""
    from speculators_kit.train.ds import end_distributed
    from speculators_kit.train.recipe import run_training

    try:
        return run_training(cfg, resume)
    finally:
        end_distributed()


def launch(config_path: str, overrides: list[str], nproc: int, resume: bool, hostfile: str | None) -> int:
    if nproc == 1 and hostfile is None:
        import json

        from speculators_kit.schema import load_config

        print(json.dumps(train_here(load_config(config_path, "train", overrides), resume)))
        return 0
    from speculators_kit.train.ds import free_port

    if hostfile:
        check_hostfile(hostfile)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
           "--master_port", str(free_port()), "--no_local_rank"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    cmd += ["--module", RANK_MODULE, config_path]
    for item in overrides:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores
    cuda = _has_cuda()
    env.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    if not cuda:
        cpu_runtime.preload(env)  # the ranks start here: speckit's own process may lack it
    with tempfile.TemporaryDirectory(prefix="speckit-rank-errors-") as errors:
        env[RANK_ERRORS] = errors
        code = procs.call(cmd, env=env, on_signal=stop_ranks)
        said = _rank_errors(Path(errors))
    if code == 0:
        return 0
    from speculators_kit.schema import load_config
    from speculators_kit.train import checkpoint

    out_dir = Path(load_config(config_path, "train", overrides).output.dir).expanduser()
    checkpoint.remove_partial(out_dir)  # the launcher may have killed a rank mid-save
    if said:  # once, as the last line, not once per rank among the launcher's logs
        raise SpecKitError(said)
    if code < 0:  # the launcher itself: procs.call has killed what it had started
        killed = signal.Signals(-code)
        print(file=sys.stderr)  # rank 0's progress bar was cut mid-line, and no log line follows it
        raise SpecKitError(_killed(f"DeepSpeed's launcher was killed by {killed.name}, so speckit "
                                   f"stopped the ranks", killed, out_dir))
    if killed := _killing_signal(code):
        raise SpecKitError(_killed(f"a training rank was killed by {killed.name}, and DeepSpeed's "
                                   f"launcher stopped the others", killed, out_dir))
    return code


def _killing_signal(code: int) -> signal.Signals | None:
    """DeepSpeed's launcher exits with the return code of the rank that died first: -N for a
    rank killed by signal N, which the exit status carries as 256 - N."""
    with contextlib.suppress(ValueError):
        return signal.Signals(256 - code) if 256 - 64 < code < 256 else None
    return None


def _killed(said: str, killed: signal.Signals, out_dir: Path) -> str:
    """What happened, the likely cause and the way on, as DeepSpeed says only `exits with return
    code = -9` among the other ranks' tracebacks (theirs say the connection to the dead rank was
    reset), or nothing at all when the launcher itself is killed."""
    from speculators_kit.train import checkpoint

    if killed == signal.SIGKILL:
        said += (" (mostly the kernel's OOM killer: `dmesg | grep -i oom` tells; fewer --nproc or a "
                 "smaller train.micro_batch_tokens need less memory)")
    return f"{said}; {checkpoint.way_on(out_dir)}"


def _rank_errors(folder: Path) -> str:
    """What the ranks' errors say: one message if they agree (they mostly do), else each rank's."""
    said = {p.stem: p.read_text() for p in sorted(folder.glob("rank-*.txt"))}
    if len(set(said.values())) <= 1:
        return next(iter(said.values()), "")
    return "; ".join(f"{rank.replace('-', ' ')}: {text}" for rank, text in said.items())


def stop_ranks(proc, signum) -> None:
    """Ctrl-C or SIGTERM: ask each rank to stop after its step with a checkpoint (train/stop.py).
    The ranks on this machine suffice: every rank stops when one was asked. None is found when
    none has started (nothing to save) or DeepSpeed started them over ssh (a hostfile of several
    machines): then everything stops at once, as DeepSpeed's launcher does."""
    import psutil

    ranks = local_ranks(proc.pid)
    if not ranks:
        raise KeyboardInterrupt
    for rank in ranks:
        with contextlib.suppress(psutil.Error):
            rank.send_signal(signal.SIGUSR1)
    print(f"\ntrain: {signal.Signals(signum).name}: the {len(ranks)} ranks stop after this step with a "
          f"checkpoint to resume from (send it again to stop at once)", file=sys.stderr, flush=True)


def local_ranks(launcher_pid: int) -> list:
    """The rank processes (psutil) among the launcher's descendants on this machine."""
    import psutil

    ranks, children = [], []
    with contextlib.suppress(psutil.Error):  # the launcher may be gone already
        children = psutil.Process(launcher_pid).children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            cmdline = child.cmdline()  # `python -u -m RANK_MODULE ...`; the launchers name it too
            if any(a == "-m" and b == RANK_MODULE for a, b in itertools.pairwise(cmdline)):
                ranks.append(child)
    return ranks


def check_hostfile(path: str) -> None:
    """DeepSpeed's launcher trains on this machine alone when the hostfile is missing (one warning
    line among many), and stops with a traceback on a bad line: refuse both here, plainly."""
    if not Path(path).is_file():
        raise SpecKitError(f"--hostfile {path} does not exist (DeepSpeed would train on this machine alone)")
    hosts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"(\S+)\s+slots=(\d+)", line)
        if not match:
            raise SpecKitError(f"--hostfile {path} line {number}: {line!r} is not 'HOST slots=N'")
        if match.group(1) in hosts:
            raise SpecKitError(f"--hostfile {path} line {number}: {match.group(1)} is listed twice")
        hosts.append(match.group(1))
    if not hosts:
        raise SpecKitError(f"--hostfile {path} lists no host: one 'HOST slots=N' line per machine")
    _check_ssh(path, hosts)


def _check_ssh(path: str, hosts: list[str]) -> None:
    """DeepSpeed starts every machine's ranks over passwordless ssh (through pdsh for several),
    and checks only the first host, with a traceback: check them all here, with the fix."""
    import shutil
    import subprocess

    needs = ["ssh"] + (["pdsh"] if len(hosts) > 1 else [])
    if missing := [tool for tool in needs if shutil.which(tool) is None]:
        verb = "is" if len(missing) == 1 else "are"
        packages = " ".join("openssh-client" if tool == "ssh" else tool for tool in missing)
        raise SpecKitError(f"--hostfile {path}: DeepSpeed starts the ranks of each machine with "
                           f"{' and '.join(needs)}, and {' and '.join(missing)} {verb} not installed here "
                           f"(Debian/Ubuntu: apt install {packages})")
    check = ["ssh", "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    unreachable = [host for host in hosts if subprocess.run(
        [*check, host, "true"], stdin=subprocess.DEVNULL, capture_output=True, check=False).returncode != 0]
    if unreachable:
        raise SpecKitError(f"--hostfile {path}: {', '.join(unreachable)} not reachable by passwordless ssh, "
                           f"which DeepSpeed starts the ranks with: `ssh {unreachable[0]} true` must work "
                           f"without a password; or drop --hostfile to train on this machine alone (--nproc N)")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
