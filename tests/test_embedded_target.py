"""The embedded SmolLM2 target: built offline, idempotent, safe under concurrency, and
integrity-checked."""

import json
import subprocess
import sys

import pytest

from speculators_kit.core.errors import SpecKitError
from speculators_kit.target import embedded


def test_corrupt_gguf_is_refused(tmp_path):
    spec = embedded.EMBEDDED["smollm2-135m-instruct"]
    bad = tmp_path / spec.gguf_file
    bad.write_bytes(b"not a gguf")
    with pytest.raises(SpecKitError, match="corrupt"):
        embedded._verified(bad, spec)


def test_resolve_target_errors(tmp_path):
    with pytest.raises(SpecKitError, match="neither an embedded target"):
        embedded.resolve_target(tmp_path / "missing")
    with pytest.raises(SpecKitError, match="no config.json"):
        embedded.resolve_target(tmp_path)
    with pytest.raises(SpecKitError, match="unknown embedded target"):
        embedded.prepare("gpt-17")


@pytest.mark.slow
def test_concurrent_prepare_builds_once(tmp_path, smollm2):
    out = tmp_path / "smol"
    code = f"from speculators_kit.target.embedded import prepare; print(prepare(out={str(out)!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert {r[0].strip() for r in results} == {str(out)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smol", "smol.lock"]  # no temp dirs left
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and (out / "chat_template.jinja").is_file()
    assert (out / "model.safetensors").read_bytes() == (smollm2 / "model.safetensors").read_bytes()
    mtime = (out / "model.safetensors").stat().st_mtime
    assert embedded.prepare(out=out) == out  # idempotent: nothing rebuilt
    assert (out / "model.safetensors").stat().st_mtime == mtime
