"""`capture.model_dtype: auto` picks bf16 only where the hardware computes in it (the test that
training's `precision: auto` uses), and the store records the dtype the target actually ran in."""

from speculators_kit.datagen.run import resolve_model_dtype
from speculators_kit.train.ds import native_bf16


def test_auto_follows_native_bf16_and_explicit_names_pass_through():
    assert resolve_model_dtype("auto") == ("bfloat16" if native_bf16() else "float32")
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_model_dtype(name) == name


def test_auto_is_float32_without_bf16_hardware(monkeypatch):
    monkeypatch.setattr("speculators_kit.datagen.run.native_bf16", lambda: False)
    assert resolve_model_dtype("auto") == "float32"
    monkeypatch.setattr("speculators_kit.datagen.run.native_bf16", lambda: True)
    assert resolve_model_dtype("auto") == "bfloat16"


def test_the_store_records_the_resolved_dtype(tiny_llama, tmp_path):
    from speculators_kit.datagen.run import build_manifest
    from speculators_kit.schema import KINDS, validate

    cfg = validate(KINDS["datagen"], {"target": {"path": str(tiny_llama)},
                                      "data": {"source": "jsonl", "path": "x.jsonl"},
                                      "capture": {"model_dtype": "auto"},
                                      "output": {"dir": str(tmp_path / "store")}}, "datagen")
    assert build_manifest(cfg, tiny_llama).provenance["model_dtype"] == resolve_model_dtype("auto")
