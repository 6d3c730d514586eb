"""Start training: in this process for one process, else through DeepSpeed's launcher
(`--nproc N` processes on this machine, or every host of a DeepSpeed hostfile)."""

from __future__ import annotations

import os
import re
import sys

from speculators_kit import cpu_runtime, procs


def launch(config_path: str, overrides: list[str], nproc: int, resume: bool, hostfile: str | None) -> int:
    if nproc == 1 and hostfile is None:
        from speculators_kit.schema import load_config
        from speculators_kit.train.recipe import run_training

        result = run_training(load_config(config_path, "train", overrides), resume)
        import json

        print(json.dumps(result))
        return 0
    from speculators_kit.train.ds import free_port

    if hostfile:
        check_hostfile(hostfile)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
           "--master_port", str(free_port()), "--no_local_rank"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    cmd += ["--module", "speculators_kit.train.recipe", config_path]
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
    return procs.call(cmd, env=env)


def check_hostfile(path: str) -> None:
    """DeepSpeed's launcher trains on this machine alone when the hostfile is missing (one warning
    line among many), and stops with a traceback on a bad line: refuse both here, plainly."""
    from pathlib import Path

    from speculators_kit.core.errors import SpecKitError

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


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
