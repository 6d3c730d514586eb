"""`capture.model_dtype: auto` picks bf16 only where the hardware computes in it, and the store
records the dtype the target actually ran in."""

import pytest

from speculators_kit.datagen.model_dtype import cpu_flags, resolve_model_dtype

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f {extra}
bugs\t\t: spectre_v1
"""


@pytest.mark.parametrize("extra, expected", [
    ("amx_bf16 amx_tile", "bfloat16"),
    ("avx512_bf16", "bfloat16"),
    ("avx512bw avx512vl", "float32"),  # AVX-512 without bf16 instructions: emulated bf16 is slower
])
def test_auto_follows_the_cpu_flags(tmp_path, extra, expected):
    (tmp_path / "cpuinfo").write_text(CPUINFO.format(extra=extra))
    flags = cpu_flags(tmp_path / "cpuinfo")
    assert "avx2" in flags and "bugs" not in flags
    assert resolve_model_dtype("auto", flags, cuda=False) == expected


def test_auto_is_bf16_on_a_gpu_and_explicit_names_pass_through(tmp_path):
    assert resolve_model_dtype("auto", set(), cuda=True) == "bfloat16"
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_model_dtype(name, {"amx_bf16"}, cuda=True) == name
    assert cpu_flags(tmp_path / "missing") == set()


def test_the_store_records_the_resolved_dtype(tiny_llama, tmp_path):
    from speculators_kit.datagen.run import build_manifest
    from speculators_kit.schema import KINDS, validate

    cfg = validate(KINDS["datagen"], {"target": {"path": str(tiny_llama)},
                                      "data": {"source": "jsonl", "path": "x.jsonl"},
                                      "capture": {"model_dtype": "auto"},
                                      "output": {"dir": str(tmp_path / "store")}}, "datagen")
    recorded = build_manifest(cfg, tiny_llama).provenance["model_dtype"]
    assert recorded == resolve_model_dtype("auto") and recorded in ("bfloat16", "float32")
