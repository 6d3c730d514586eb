"""`speckit convert SRC OUT --from LAYOUT --target T [--to ours|speculators] [--dtype] [--validate]`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from speculators_kit.convert.layouts import check_complete, detect, map_state_dict
from speculators_kit.convert.source import read_source
from speculators_kit.convert.translate import translate
from speculators_kit.core.draft import DraftCache, DraftHead
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import check_against_target, save_draft, shared_target_weight

VALIDATE_ATOL = 1e-4  # fp32 logits, reference vs converted head (measured ~1e-6)


def convert(src, out, layout: str, target: str, to: str = "ours", dtype: str = "fp32",
            validate: bool = False, overwrite: bool = False, log=print, vllm: bool = True) -> Path:
    """vllm=False skips the vLLM half of --validate (unit tests; machines without vLLM)."""
    from speculators_kit.target.embedded import resolve_target

    out = Path(out)
    if out.exists() and not overwrite:
        raise SpecKitError(f"{out} already exists; pass --overwrite or choose another output")
    target_dir = resolve_target(target)
    config, state = read_source(src)
    if layout == "auto":
        layout = detect(config, state)
        log(f"convert: detected the {layout} layout")
    mapped = map_state_dict(state, layout)
    provenance = {"created_by": "speckit convert", "source": str(Path(src).resolve()), "layout": layout}
    cfg = translate(layout, config, mapped, target_dir, provenance)
    _check_width(cfg, target_dir)
    check_against_target(cfg, target_dir, str(src))
    head = build_head(cfg, mapped, target_dir)
    if validate:
        err = validate_head(head, state, layout, config, target_dir)
        log(f"convert: reference forward of the {layout} source vs converted head: max |dlogit| "
            f"{err:.2e} (allowed {VALIDATE_ATOL})")
    head = head.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    staged = out.parent / f".{out.name}.converting"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        if to == "speculators":
            export_speculators(head, staged, target_dir)
        else:
            save_draft(head, staged, target_dir=target_dir)
        if validate and vllm and _has_vllm():
            vllm_check(staged, cfg, target_dir, out.parent, log)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log(f"convert: wrote {out} ({cfg.arch}, {cfg.layer.num_hidden_layers} layer(s), draft vocab "
        f"{cfg.draft_vocab_size})")
    return out


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


VLLM_PROMPTS = ["What is 12 plus 30?", "Name three fruits.", "Write one sentence about rain.",
                "Count from one to five."]


def vllm_check(draft: Path, cfg, target_dir, scratch: Path, log) -> None:
    """The converted draft loads in vLLM and its greedy output equals target-only."""
    from speculators_kit.eval.run import evaluate

    work = Path(tempfile.mkdtemp(prefix=".convert-vllm-", dir=scratch))
    try:
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in VLLM_PROMPTS))
        summary = evaluate(str(target_dir), str(draft), str(prompts), work / "eval", k=3,
                           max_new_tokens=24, concurrency=4, log=lambda m: None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if summary["greedy_identical"] is not True or not summary["num_drafts"]:
        raise SpecKitError("validation failed: in vLLM the converted draft changed the greedy "
                           "output (or never drafted); not writing the output")
    log(f"convert: vLLM loads it; greedy output identical to target-only on {len(VLLM_PROMPTS)} "
        f"prompts (tau {summary['tau']:.2f})")


def _check_width(cfg, target_dir) -> None:
    from speculators_kit.core.build import target_config

    want = target_config(target_dir)["hidden_size"]
    if cfg.layer.hidden_size != want:
        raise SpecKitError(f"the source's hidden size {cfg.layer.hidden_size} does not match the "
                           f"target's {want}: this draft was made for another target (--target)")


def build_head(cfg, mapped: dict, target_dir) -> DraftHead:
    head = DraftHead(cfg)
    expected = head.state_dict()
    shared = ("embed_tokens.weight",) + (("lm_head.weight",) if cfg.arch == "eagle" else ())
    check_complete(mapped, expected, shared)
    full = dict(mapped)
    for name in shared:
        if name not in full:
            full[name] = shared_target_weight(target_dir, name)
            if full[name] is None:
                raise SpecKitError(f"the source has no {name} and the target has none to share")
    if head.d2t is not None:
        _check_vocab_mapping(full["d2t"], full["t2d"], cfg.layer.vocab_size)
    head.load_state_dict({k: v.to(expected[k].dtype) for k, v in full.items()}, strict=True)
    return head.eval()


def _check_vocab_mapping(d2t, t2d, vocab: int) -> None:
    ids = torch.arange(len(d2t)) + d2t.long()
    if ids.min() < 0 or ids.max() >= vocab:
        raise SpecKitError(f"the vocab mapping d2t sends draft ids to target ids {int(ids.min())}.."
                           f"{int(ids.max())}, outside the target vocab 0..{vocab - 1}")
    if len(t2d) != vocab or int(t2d.sum()) != len(d2t) or not bool(t2d.bool()[ids].all()):
        raise SpecKitError("the vocab mapping is inconsistent: t2d does not mark exactly the "
                           "target ids d2t maps to")


@torch.no_grad()
def validate_head(head: DraftHead, state: dict, layout: str, config: dict, target_dir) -> float:
    """Max |logit difference| between the source's reference forward and our head on random
    tokens and target features; raises above VALIDATE_ATOL."""
    from speculators_kit.convert import reference

    cfg = head.config
    if cfg.layer.rope_parameters.get("rope_type", "default") != "default":
        raise SpecKitError("--validate covers default RoPE only; this draft uses "
                           f"{cfg.layer.rope_parameters['rope_type']}")
    g = torch.Generator().manual_seed(0)
    T = 12
    ids = torch.randint(0, cfg.layer.vocab_size, (T,), generator=g)
    feats = torch.randn(T, cfg.fc_input_size if cfg.arch == "eagle3" else cfg.layer.hidden_size, generator=g)
    h = head.float()
    logit_hidden, _ = h.step(ids[None], h.fuse(feats[None]), torch.arange(T)[None], DraftCache())
    ours = h.compute_logits(logit_hidden)[0]
    rcfg = {**cfg.layer.model_dump(), "rope_theta": cfg.layer.rope_parameters["rope_theta"]}
    src = {k: v.float() for k, v in (state if layout != "speculators" and layout != "ours"
                                     else _speculators_as_source(h)).items()}
    embed = h.embed_tokens.weight
    if cfg.arch == "eagle3":
        ref = reference.eagle3_logits(src, rcfg, embed, ids, feats)
    else:
        ref = reference.eagle1_logits(src, rcfg, embed, h.lm_head.weight, ids, feats)
    err = float((ref - ours).abs().max())
    if not err <= VALIDATE_ATOL:
        raise SpecKitError(f"validation failed: converted head and the source's reference forward "
                           f"differ by {err:.2e} (> {VALIDATE_ATOL}); not writing the output")
    return err


def _speculators_as_source(head) -> dict:
    """speculators checkpoints share our names; the reference reads EAGLE-3's as `midlayer`."""
    state = head.state_dict()
    if head.config.arch == "eagle3":
        if head.config.layer.num_hidden_layers != 1:
            raise SpecKitError("--validate covers one-layer EAGLE-3 drafts (the SafeAILab "
                               "architecture); this one has more layers")
        return {k.replace("layers.0.", "midlayer."): v for k, v in state.items()}
    return state


def export_speculators(head: DraftHead, out: Path, target_dir) -> Path:
    """The layout the `speculators` package loads: our config without our own section."""
    if head.config.arch != "eagle3":
        raise SpecKitError("--to speculators writes EAGLE-3 drafts only (the package has no EAGLE-1)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_draft(head, tmp / "d", target_dir=target_dir)
        config = json.loads((tmp / "d" / "config.json").read_text())
        config.pop("speculators_kit", None)
        config.pop("fc_bias", None)  # ours; EAGLE-3 never has one
        config["architectures"] = ["Eagle3Speculator"]
        (tmp / "d" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "d", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
