"""A disk that fills while training writes: one error with the way on, no half-written
checkpoint, and the run resumes from the last whole one once there is room."""

import pytest

from tests.helpers import fill_disk, small_disk
from tests.train.test_trainer import _start_training

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("room", ["none", "one checkpoint"])
def test_a_full_disk_is_said_with_the_way_on_and_the_run_goes_on(train_config, tmp_path, nproc, room):
    """Before, torch's `RuntimeError: basic_ios::clear: iostream error` (or an OSError) came out
    as a traceback per rank, and the half-written checkpoint kept the space it had taken."""
    with small_disk(tmp_path / "disk", 8 << 10) as disk:
        cfg = train_config(output={"dir": str(disk / "run")},
                           train={"max_steps": 6, "save_every": 3, "eval_every": 100})
        ballast = fill_disk(disk, 0)
        if room == "one checkpoint":  # what the first checkpoint took, measured on this disk
            ballast.unlink()
            ok = _start_training(train_config("first.yaml", output={"dir": str(disk / "first")},
                                              train={"max_steps": 3, "save_every": 3, "eval_every": 100}),
                                 "--nproc", nproc)
            assert ok.wait(timeout=600) == 0, ok.communicate()[1][-3000:]
            ballast = fill_disk(disk, 0)
            (disk / "first").rename(disk / "run")  # a run that saved step 3, then the disk filled
            cfg = train_config(output={"dir": str(disk / "run")},
                               train={"max_steps": 6, "save_every": 1, "eval_every": 100})
        args = ("--resume",) if room == "one checkpoint" else ()
        proc = _start_training(cfg, "--nproc", nproc, *args)
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 1, err[-3000:]
        said = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(said) == 1, err[-3000:]
        assert said[0].startswith(f"error: training stopped: the disk holding {disk / 'run'} is full"), said
        way = ("add --resume to the same command to go on from step-00000003" if room == "one checkpoint"
               else "it had saved no checkpoint yet, so the same command starts it again")
        assert said[0].endswith(way), said
        assert not list((disk / "run").glob("checkpoints/.step-*.tmp"))
        ballast.unlink()
        again = _start_training(cfg, "--nproc", nproc, *args)
        assert again.wait(timeout=600) == 0, again.communicate()[1][-3000:]
        assert (disk / "run" / "checkpoints" / "step-00000006" / "state.json").is_file()
