"""Conversion from each research layout: numerics against reference forwards of the source
architecture, round trips, and one clear error with nothing written for each bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from speculators_kit.convert.run import VALIDATE_ATOL, convert
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import load_draft, read_config
from tests.convert.sources import eagle1_source, eagle3_source


def run(src, out, target, layout="auto", **kw):
    return convert(src, out, layout, str(target), log=lambda m: None, vllm=False, **kw)


def test_eagle3_safeailab_converts_and_matches_reference(tmp_path, tiny_llama):
    weights = eagle3_source(tmp_path / "src")
    logs = []
    convert(tmp_path / "src", tmp_path / "out", "auto", str(tiny_llama), validate=True, vllm=False,
            log=logs.append)
    assert any("detected the eagle3 layout" in m for m in logs)
    err = float(next(m for m in logs if "max |dlogit|" in m).split("max |dlogit| ")[1].split()[0])
    assert err < VALIDATE_ATOL
    head = load_draft(tmp_path / "out", target_dir=tiny_llama)
    assert head.config.eagle_aux_hidden_state_layer_ids == [1, 2, 3] and head.config.draft_vocab_size == 96
    assert torch.equal(head.d2t, weights["d2t"]) and torch.equal(head.layers[0].hidden_norm.weight,
                                                                  weights["midlayer.hidden_norm.weight"])
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert "embed_tokens.weight" not in saved  # shared with the target, not copied
    assert read_config(tmp_path / "out").speculators_kit.provenance["layout"] == "eagle3"


@pytest.mark.parametrize("layout, layers", [("eagle", 1), ("hass", 2)])
def test_eagle1_and_hass_bin_with_fc_bias(tmp_path, tiny_llama, layout, layers):
    weights = eagle1_source(tmp_path / "src", layers)
    run(tmp_path / "src", tmp_path / "out", tiny_llama, layout, validate=True)
    head = load_draft(tmp_path / "out", target_dir=tiny_llama)
    assert head.config.arch == "eagle" and head.config.fc_bias and len(head.layers) == layers
    assert torch.equal(head.fc.bias, weights["fc.bias"])


def test_validation_catches_a_wrong_mapping(tmp_path, tiny_llama, monkeypatch):
    """If the map swapped two norms, the reference forward disagrees and nothing is written."""
    from speculators_kit.convert import layouts

    w = eagle3_source(tmp_path / "src")
    w["midlayer.hidden_norm.weight"], w["midlayer.input_layernorm.weight"] = (
        w["midlayer.input_layernorm.weight"], w["midlayer.hidden_norm.weight"])
    save_file(w, str(tmp_path / "src" / "model.safetensors"))
    original = layouts.map_state_dict

    def swapped(state, layout):
        out = original(state, layout)
        a, b = "layers.0.hidden_norm.weight", "layers.0.input_layernorm.weight"
        out[a], out[b] = out[b], out[a]
        return out

    monkeypatch.setattr("speculators_kit.convert.run.map_state_dict", swapped)
    with pytest.raises(SpecKitError, match="validation failed"):
        run(tmp_path / "src", tmp_path / "out", tiny_llama, validate=True)
    assert not (tmp_path / "out").exists()


def test_speculators_release_and_round_trip(tmp_path, tiny_llama):
    """ours -> speculators layout -> (an older release's config spelling) -> ours: same tensors."""
    eagle3_source(tmp_path / "src")
    run(tmp_path / "src", tmp_path / "ours", tiny_llama)
    run(tmp_path / "ours", tmp_path / "spec", tiny_llama, to="speculators")
    cfg = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert cfg["architectures"] == ["Eagle3Speculator"] and "speculators_kit" not in cfg
    assert cfg["speculators_model_type"] == "eagle3" and cfg["speculators_config"]["algorithm"] == "eagle3"
    assert cfg["speculators_config"]["proposal_methods"][0]["proposal_type"] == "greedy"
    # older releases: torch_dtype + rope_theta instead of rope_parameters, a saved verifier head
    layer = cfg["transformer_layer_config"]
    layer["torch_dtype"] = "float32"
    layer["rope_theta"] = layer.pop("rope_parameters")["rope_theta"]
    (tmp_path / "spec" / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(tmp_path / "spec" / "model.safetensors"))
    w["verifier_lm_head.weight"] = torch.zeros(256, 64)
    save_file(w, str(tmp_path / "spec" / "model.safetensors"))
    logs = []
    convert(tmp_path / "spec", tmp_path / "back", "auto", str(tiny_llama), validate=True, vllm=False,
            log=logs.append)
    assert any("detected the speculators layout" in m for m in logs)
    a, b = load_draft(tmp_path / "ours", tiny_llama).state_dict(), load_draft(tmp_path / "back", tiny_llama).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_output(tmp_path, tiny_llama):
    eagle3_source(tmp_path / "src")
    run(tmp_path / "src", tmp_path / "out", tiny_llama, dtype="bf16")
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["fc.weight"].dtype == torch.bfloat16


class Evil:
    def __reduce__(self):
        return (print, ("this ran at load time",))


def _edit(src, change):
    w = load_file(str(src / "model.safetensors"))
    change(w)
    save_file(w, str(src / "model.safetensors"))


@pytest.mark.parametrize("case, expected", [
    ("unknown", "unknown checkpoint layout"),
    ("missing", "lacks 1 weight.*layers.0.mlp.down_proj.weight"),
    ("extra", "no eagle3 rule maps: foo.weight"),
    ("hidden", "hidden size 96 does not match the target.s 64"),
    ("vocab", "outside the target vocab"),
    ("pickle", "a pickle that needs code"),
    ("exists", "already exists; pass --overwrite"),
    ("file", "src.notes.txt is a file and its folder .* has no config.json: a source checkpoint is a folder"),
])
def test_bad_source(tmp_path, tiny_llama, case, expected):
    src, out = tmp_path / "src", tmp_path / "out"
    eagle3_source(src)
    if case == "unknown":
        save_file({"something.weight": torch.zeros(2)}, str(src / "model.safetensors"))
    elif case == "missing":
        _edit(src, lambda w: w.pop("midlayer.mlp.down_proj.weight"))
    elif case == "extra":
        _edit(src, lambda w: w.update({"foo.weight": torch.zeros(3)}))
    elif case == "hidden":
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    elif case == "vocab":
        _edit(src, lambda w: w["d2t"].add_(200))
    elif case == "pickle":
        (src / "model.safetensors").unlink()
        torch.save({"fc.weight": Evil()}, str(src / "pytorch_model.bin"))
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "file":  # a file given where the folder goes (a weight file beside config.json works)
        (src / "config.json").unlink()
        (src / "notes.txt").write_text("x")
        src = src / "notes.txt"
    with pytest.raises(SpecKitError, match=expected):
        run(src, out, tiny_llama, validate=True)
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
