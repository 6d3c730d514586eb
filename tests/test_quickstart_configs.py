"""The configs `speckit quickstart` writes: valid for every budget, and the stores datagen
fills are the ones training reads."""

import json

import pytest

from speculators_kit.quickstart import BUDGETS, datagen_configs, train_config
from speculators_kit.schema import KINDS, validate


@pytest.mark.parametrize("budget", sorted(BUDGETS))
@pytest.mark.parametrize("gsm8k", [None, "train.jsonl"])
def test_quickstart_configs_are_valid_and_train_on_every_store(tmp_path, budget, gsm8k):
    b = BUDGETS[budget]
    stores = datagen_configs(tmp_path, b, gsm8k)
    made = [validate(KINDS["datagen"], cfg, suffix).output.dir for suffix, cfg in stores.items()]
    trained = validate(KINDS["train"], train_config(tmp_path, b, list(stores)), "train").data.stores
    assert trained == made and len(set(made)) == len(made)
    sources = [cfg["data"] for cfg in stores.values()]
    if gsm8k:  # GSM8K alone: the lead-in questions are for self-made conversations
        assert [d["source"] for d in sources] == ["jsonl"]
    else:
        lead_ins = [d for d in sources if d.get("lead_ins") == "general"]
        assert [(d["limit"], d["turns"]) for d in lead_ins] == list(b.get("lead_in_stores", ()))
        assert len({d["seed"] for d in sources}) == len(sources)  # other questions in each store


def _stages(out, budget, gsm8k=None):
    stores = datagen_configs(out, BUDGETS[budget], gsm8k)
    return stores, train_config(out, BUDGETS[budget], list(stores))["data"]["stores"]


def test_a_training_on_other_stores_is_not_taken_as_done(tmp_path, tiny_llama):
    """A --budget full run made before the lead-in store: its draft is not this budget's."""
    from speculators_kit.core.errors import SpecKitError
    from speculators_kit.quickstart import check_earlier_stages

    (tmp_path / "train").mkdir()
    old = train_config(tmp_path, BUDGETS["full"], [""])
    (tmp_path / "train" / "resolved_config.json").write_text(json.dumps(old))
    with pytest.raises(SpecKitError, match=r"train \(trained on the stores .*rm -r \S+/train$"):
        check_earlier_stages(tmp_path, tiny_llama, *_stages(tmp_path, "full"))
    (tmp_path / "eval").mkdir()
    with pytest.raises(SpecKitError, match=r"rm -r \S+/train \S+/eval$"):
        check_earlier_stages(tmp_path, tiny_llama, *_stages(tmp_path, "full"))
    old["data"]["stores"] = [str(tmp_path / "." / "store")]  # the same store, another spelling
    (tmp_path / "train" / "resolved_config.json").write_text(json.dumps(old))
    check_earlier_stages(tmp_path, tiny_llama, *_stages(tmp_path, "small"))


@pytest.mark.parametrize("budget, gsm8k, changed", [
    ("full", None, "regenerate.max_new_tokens: store has 128, config asks 256"),
    ("small", "train.jsonl", "data.source: store has 'self', config asks 'jsonl'")])
def test_stores_of_another_budget_are_named_with_what_to_delete(tmp_path, tiny_llama, budget, gsm8k, changed):
    """quickstart has no --overwrite: datagen's refusal said to pass it, and only after the
    training check had sent the user to delete out/train first."""
    from speculators_kit.core.errors import SpecKitError
    from speculators_kit.datagen.run import build_manifest
    from speculators_kit.datagen.writer import StoreWriter
    from speculators_kit.quickstart import check_earlier_stages

    small = validate(KINDS["datagen"], _stages(tmp_path, "small")[0][""], "datagen")
    StoreWriter(tmp_path / "store", build_manifest(small, tiny_llama))
    check_earlier_stages(tmp_path, tiny_llama, *_stages(tmp_path, "small"))  # a resume
    now = _stages(tmp_path, budget, gsm8k and str(tmp_path / gsm8k))
    with pytest.raises(SpecKitError) as err:
        check_earlier_stages(tmp_path, tiny_llama, *now)
    message = str(err.value)
    assert changed in message and "--overwrite" not in message, message
    assert message.endswith(f"rm -r {tmp_path / 'store'}"), message
    (tmp_path / "train").mkdir()  # a draft trained on that store is not this run's either
    (tmp_path / "train" / "resolved_config.json").write_text(json.dumps(train_config(tmp_path, BUDGETS["small"], [""])))
    with pytest.raises(SpecKitError, match=f"rm -r {tmp_path / 'store'} {tmp_path / 'train'}$"):
        check_earlier_stages(tmp_path, tiny_llama, *now)


def test_readme_states_the_full_budgets_wall_time():
    """`speckit quickstart --help` reads the wall times from BUDGETS; the README's command line
    must say the same (the help had drifted to ~2.5 h while the README said ~4 h)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("speckit quickstart --out runs/quickstart "))
    hours = re.findall(r"~\d+ h", BUDGETS["full"]["wall"])
    assert len(hours) == 2 and all(h in line for h in hours), (hours, line)


def test_each_invocation_records_its_stage_times_and_a_resume_keeps_the_earlier_ones(tmp_path):
    import json
    import time

    from speculators_kit.quickstart import StageClock

    path = tmp_path / "run" / "timings.json"
    first = StageClock(path, "small")
    with first("datagen"):
        time.sleep(0.2)
    with pytest.raises(RuntimeError), first("train"):  # a failed stage records nothing
        raise RuntimeError("killed")
    again = StageClock(path, "small")
    with again("datagen"):
        pass
    runs = json.loads(path.read_text())["runs"]
    assert [sorted(r["stages_s"]) for r in runs] == [["datagen"], ["datagen"]]
    assert runs[0]["stages_s"]["datagen"] >= 0.2 > runs[1]["stages_s"]["datagen"]
    assert runs[-1]["cores"] >= 1 and runs[-1]["cpu_capability"] and "min" in again.summary()
    path.write_text("{not json")
    StageClock(path, "small")._save()
    assert (path.parent / "timings.json.unreadable").read_text() == "{not json"
    assert len(json.loads(path.read_text())["runs"]) == 1


def test_a_gsm8k_file_that_is_not_there_stops_it_before_any_stage(tmp_path, capsys):
    from speculators_kit.cli import main

    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--gsm8k", str(tmp_path / "train.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "error: --gsm8k" in err and "train.jsonl is not a file" in err
    assert "1/4 target" not in err and not (tmp_path / "qs").exists()
