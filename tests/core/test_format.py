"""Speculator format: exact round trip, shared weights, transformers integration, and one
clear error (with nothing written) for each bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import load_draft, read_config, save_draft
from tests.helpers import make_draft


@pytest.mark.parametrize("arch,layers", [("eagle3", 1), ("eagle3", 2), ("eagle", 1)])
def test_round_trip_is_exact(tiny_llama, tmp_path, arch, layers):
    head = make_draft(tiny_llama, tmp_path / "d", arch, layers, draft_vocab_size=None)
    loaded = load_draft(tmp_path / "d", target_dir=tiny_llama)
    want, got = head.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert loaded.config == head.config


def test_layout_is_what_vllm_loads(tiny_llama, tmp_path):
    make_draft(tiny_llama, tmp_path / "d", "eagle3", 1, draft_vocab_size=64)
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert "model_type" not in config and config["speculators_model_type"] == "eagle3"
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5
    assert config["transformer_layer_config"]["model_type"] == "llama"
    assert config["norm_before_residual"] is False  # vLLM defaults a missing key to True
    assert config["speculators_kit"]["target_fingerprint"].startswith("sha256:")
    names = set(load_file(str(tmp_path / "d" / "model.safetensors")))
    assert "embed_tokens.weight" not in names  # equal to the target's: shared
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
            "layers.0.self_attn.q_proj.weight", "layers.0.hidden_norm.weight"} <= names


def test_transformers_auto_classes_load_a_draft(tiny_llama, tmp_path):
    from transformers import AutoConfig, AutoModel

    import speculators_kit  # noqa: F401  (installs the transformers hook)

    head = make_draft(tiny_llama, tmp_path / "d")
    config = AutoConfig.from_pretrained(tmp_path / "d")
    assert config.to_speculator_config() == head.config
    model = AutoModel.from_pretrained(tmp_path / "d")
    assert torch.equal(model.fc.weight, head.fc.weight)


def bad(fn, *match):
    with pytest.raises(SpecKitError) as err:
        fn()
    for text in match:
        assert text in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_dir(tmp_path):
    bad(lambda: load_draft(tmp_path / "nope"), "does not exist")
    (tmp_path / "draft.safetensors").write_bytes(b"")
    bad(lambda: load_draft(tmp_path / "draft.safetensors"), "is a file, not a draft directory")


def test_not_a_speculator(tiny_llama):
    bad(lambda: read_config(tiny_llama), "not a speculator config", "plain 'llama'")


def test_hidden_size_mismatch(tiny_llama, tmp_path):
    from speculators_kit.testing.tiny_targets import make_tiny_target

    other = make_tiny_target(tmp_path / "wide", "llama", hidden_size=96)
    make_draft(tiny_llama, tmp_path / "d")
    bad(lambda: load_draft(tmp_path / "d", target_dir=other), "hidden size 64", "has 96")


def test_vocab_mismatch(tiny_llama, tmp_path):
    from speculators_kit.testing.tiny_targets import make_tiny_target

    other = make_tiny_target(tmp_path / "big", "llama", vocab_size=300)
    make_draft(tiny_llama, tmp_path / "d")
    bad(lambda: load_draft(tmp_path / "d", target_dir=other), "vocab 256", "has 300")


def test_fingerprint_mismatch(tiny_targets, tmp_path):
    # Same shapes, different tokenizer: only the fingerprint can tell.
    other = tmp_path / "other"
    shutil.copytree(tiny_targets["llama"], other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zz"] = tok["model"]["vocab"].pop("a")
    (other / "tokenizer.json").write_text(json.dumps(tok))
    make_draft(tiny_targets["llama"], tmp_path / "d")
    bad(lambda: load_draft(tmp_path / "d", target_dir=other), "fingerprint")


def test_corrupt_weights(tiny_llama, tmp_path):
    make_draft(tiny_llama, tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").write_bytes(b"garbage")
    bad(lambda: load_draft(tmp_path / "d", target_dir=tiny_llama), "safetensors")


def test_existing_output_is_left_untouched(tiny_llama, tmp_path):
    head = make_draft(tiny_llama, tmp_path / "d")
    before = (tmp_path / "d" / "model.safetensors").read_bytes()
    bad(lambda: save_draft(head, tmp_path / "d"), "already exists", "--overwrite")
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp dirs left behind


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["transformer_layer_config"].update(num_hidden_layers=0), "num_hidden_layers"),
    (lambda c: c.update(draft_vocab_size=0), "draft_vocab_size"),
    (lambda c: c.update(eagle_aux_hidden_state_layer_ids=[1, 1, 2]), "must be distinct"),
    (lambda c: c["speculators_kit"]["moe"].update(num_experts=2, top_k=3), "moe.top_k 3 exceeds moe.num_experts 2"),
])
def test_an_impossible_config_is_refused_on_read(tiny_llama, tmp_path, edit, message):
    make_draft(tiny_llama, tmp_path / "d")
    path = tmp_path / "d" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    bad(lambda: read_config(tmp_path / "d"), "invalid speculator config", message)
