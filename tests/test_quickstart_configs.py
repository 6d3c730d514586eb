"""The configs `speckit quickstart` writes: valid for every budget, and the stores datagen
fills are the ones training reads."""

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
        assert sum(d.get("lead_ins") == "general" for d in sources) == (1 if b.get("lead_in_samples") else 0)
        assert len({d["seed"] for d in sources}) == len(sources)  # other questions in each store
