"""results.json, report.md and acceptance.png from the engine runs of one evaluation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from speculators_kit.eval.cpu_share import all_clean, is_clean

LABELS = {"target_only": "target only", "speculative": "draft", "ngram": "ngram"}


def _stats(per_category: dict) -> dict:
    keys = ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "seconds", "tokens")
    total = {k: sum(c.get(k, 0) for c in per_category.values()) for k in keys}
    width = max((len(c["per_pos"]) for c in per_category.values()), default=0)
    per_pos = [sum(c["per_pos"][i] for c in per_category.values() if i < len(c["per_pos"]))
               for i in range(width)]
    drafts, accepted = total["num_drafts"], total["num_accepted_tokens"]
    # Every target forward (a turn's prefill, a verification step with or without a draft)
    # yields one token plus the drafts it accepts, so forwards = generated - accepted. vLLM's
    # tau counts only steps that had a draft: ngram without a match, drafts cut to nothing by
    # early exit and prefills are left out, so tau alone overstates what a forward yields.
    steps = total["tokens"] - accepted
    return {
        "tau": 1 + accepted / drafts if drafts else None,
        "tokens_per_step": total["tokens"] / steps if steps > 0 else None,
        "acceptance_per_position": [a / drafts for a in per_pos] if drafts else [],
        "num_drafts": drafts, "num_draft_tokens": total["num_draft_tokens"],
        "num_accepted_tokens": total["num_accepted_tokens"],
        "tokens_per_s": total["tokens"] / total["seconds"] if total["seconds"] else 0.0,
        "generated_tokens": total["tokens"], "seconds": total["seconds"],
    }


def _dtype_note(s: dict) -> str:
    """float32 is what every earlier report measured (and said nothing of)."""
    return f" {s['dtype']}" if s.get("dtype", "float32") != "float32" else ""


def identity_message(s: dict) -> tuple[bool, str]:
    """(whether it is expected, what to say) when greedy speculative outputs differ from the
    target's alone. In float32 that is a bug; in bfloat16 it is rounding (keep_float32 in serve.py)."""
    count = f"{s['outputs_differing']} of {s['num_prompts']} prompts"
    if s.get("dtype", "float32") == "bfloat16":
        return True, (f"note: speculative outputs differ from target-only outputs at temperature 0 ({count}): "
                      f"expected in bfloat16, where a step that verifies k+1 tokens rounds differently from "
                      f"one that decodes 1 and near-tied tokens flip; --dtype float32 gives identical outputs")
    return False, f"error: speculative outputs differ from target-only outputs at temperature 0 ({count})"


def summarize(results: dict, items, **settings) -> dict:
    target = _stats(results["target_only"]["per_category"])
    summary = {**settings, "num_prompts": len(items), "date": time.strftime("%Y-%m-%d"),
               "versions": results["target_only"].get("versions", {}),
               "tokens_per_s_target_only": target["tokens_per_s"]}
    for name in ("speculative", "ngram"):
        if name not in results:
            continue
        s = _stats(results[name]["per_category"])
        prefix = "" if name == "speculative" else "ngram_"
        summary.update({f"{prefix}{k}": v for k, v in s.items()
                        if k not in ("tokens_per_s", "generated_tokens", "seconds")})
        summary[f"{prefix}by_turn"] = _by_turn(results[name]["per_category"])
        summary[f"tokens_per_s_{name}"] = s["tokens_per_s"]
        summary[f"{prefix}speedup"] = s["tokens_per_s"] / target["tokens_per_s"] if target["tokens_per_s"] else None
        differ = sum(a != b for a, b in zip(results[name]["outputs"], results["target_only"]["outputs"], strict=True))
        summary[f"{prefix}greedy_identical"] = differ == 0 if settings["temperature"] == 0 else None
        summary[f"{prefix}outputs_differing"] = differ if settings["temperature"] == 0 else None
        summary[f"{prefix}by_category"] = {
            cat: {"tau": _stats({cat: c})["tau"], "acceptance_per_position": _stats({cat: c})["acceptance_per_position"],
                  "num_prompts": c["num_prompts"]}
            for cat, c in results[name]["per_category"].items()}
    if results.get("speculative", {}).get("proposer_stats"):
        summary["proposer_stats"] = results["speculative"]["proposer_stats"]
    if "speculative" in results and "ngram" in results:
        summary["speedup_vs_ngram"] = summary["tokens_per_s_speculative"] / summary["tokens_per_s_ngram"]
    summary["timing"] = {name: r.get("timing") for name, r in results.items()}
    summary["timing_clean"] = all_clean(is_clean(t) for t in summary["timing"].values())
    return summary


def _by_turn(per_category: dict) -> dict:
    """tau and tokens per step of the n-th turn of every conversation (runs made before
    per-turn counters existed have none)."""
    turns: dict[str, list] = {}
    for c in per_category.values():
        for t, counts in enumerate(c.get("per_turn", []), 1):
            turns.setdefault(str(t), []).append(counts)
    out = {}
    for t, parts in turns.items():
        s = _stats(dict(enumerate(parts)))
        out[t] = {"tau": s["tau"], "tokens_per_step": s["tokens_per_step"],
                  "acceptance_per_position": s["acceptance_per_position"],
                  "num_prompts": sum(p["num_prompts"] for p in parts)}
    return out


def write_report(summary: dict, out: Path) -> None:
    """results.json, report.md and acceptance.png, each written whole (temp name, then rename);
    a target-only run removes the plot an earlier run with a draft left in OUT."""
    from speculators_kit.core.store import write_json_atomic

    write_json_atomic(out / "results.json", summary)
    _atomic(out / "report.md", lambda tmp: tmp.write_text(markdown(summary)))
    if summary.get("by_category"):
        _atomic(out / "acceptance.png", lambda tmp: plot(summary, tmp))
    else:
        (out / "acceptance.png").unlink(missing_ok=True)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def markdown(s: dict) -> str:
    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    lines = [(f"# speckit eval: {s['prompts']}, {s['num_prompts']} prompts, k={s['k']}, "
              f"T={s['temperature']}, {s['engine']}{_dtype_note(s)} ({s['date']})"), "",
             "| run | tau | tokens/step | acceptance per position | tokens/s | speedup | identical |",
             "|---|---|---|---|---|---|---|",
             f"| target only | - | 1.00 | - | {f(s['tokens_per_s_target_only'], '.1f')} | 1.00 | - |"]
    for name, prefix in (("speculative", ""), ("ngram", "ngram_")):
        if f"tokens_per_s_{name}" in s:
            acc = ", ".join(f"{a:.2f}" for a in s[f"{prefix}acceptance_per_position"])
            lines.append(f"| {LABELS[name]} | {f(s[f'{prefix}tau'])} | "
                         f"{f(s.get(f'{prefix}tokens_per_step'))} | {acc} | "
                         f"{f(s[f'tokens_per_s_{name}'], '.1f')} | {f(s[f'{prefix}speedup'])} | "
                         f"{s[f'{prefix}greedy_identical']} |")
    lines += _timing_lines(s.get("timing", {}))
    if s.get("proposer_stats"):
        p = s["proposer_stats"]
        settings = json.dumps(s["proposer"]) if s.get("proposer") else "none set"
        lines += ["", (f"Proposer ({settings}): {p['drafts_cut_short']} of {p['drafts']} drafts cut short "
                       f"({p.get('drafts_empty', 0)} to nothing), "
                       f"{p['tokens_proposed']} tokens proposed, {p['tokens_saved_early_exit']} saved by "
                       f"early exit and {p['tokens_saved_budget']} by budget, "
                       f"{p['draft_passes_skipped']} draft passes skipped.")]
    lines += ["", ("tau: accepted tokens per step that had a draft, + 1 (vLLM's). tokens/step: generated "
                   "tokens per target forward, counting forwards without a draft (prefills, no ngram "
                   "match, drafts cut to nothing).")]
    if len(s.get("by_turn", {})) > 1:
        lines += ["", "| turn | run | prompts | tau | tokens/step |", "|---|---|---|---|---|"]
        for prefix, label in (("", "draft"), ("ngram_", "ngram")):
            lines += [f"| {t} | {label} | {v['num_prompts']} | {f(v['tau'])} | {f(v['tokens_per_step'])} |"
                      for t, v in s.get(f"{prefix}by_turn", {}).items()]
    if s.get("by_category"):
        lines += ["", "| category | prompts | tau |", "|---|---|---|"]
        lines += [f"| {c} | {v['num_prompts']} | {f(v['tau'])} |" for c, v in s["by_category"].items()]
    return "\n".join(lines) + "\n"


def _timing_lines(timing: dict) -> list[str]:
    def one(name, t):
        if is_clean(t) is None:
            return f"{LABELS[name]} (when and beside what: not recorded)"
        return f"{LABELS[name]} {t['started']} (other processes: {t['other_cpu_cores']:.2f} cores)"

    if not timing:
        return []
    lines = ["", "Timed: " + ", ".join(one(n, t) for n, t in timing.items()) + "."]
    for name, t in timing.items():
        if is_clean(t) is False:
            lines.append(f"**Not a clean measurement:** other processes kept {t['other_cpu_cores']:.2f} of "
                         f"{t['cpu_count']} cores busy while the {LABELS[name]} run was timed, so its "
                         f"tokens/s and every speedup that uses it read wrong. Delete runs/{name}.json "
                         f"next to this report and re-run on a quiet machine to time it again.")
    return lines


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pos = range(1, len(s["acceptance_per_position"]) + 1)
    ax1.bar(pos, s["acceptance_per_position"])
    ax1.set(xlabel="draft position", ylabel="accepted fraction", title=f"acceptance (tau {s['tau']:.2f})",
            ylim=(0, 1))
    cats = list(s["by_category"])
    ax2.bar(cats, [s["by_category"][c]["tau"] or 0 for c in cats])
    ax2.set(ylabel="tau", title="tau by category")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # the temp name has no .png suffix
    plt.close(fig)
