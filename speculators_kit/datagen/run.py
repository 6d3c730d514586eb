"""`speckit datagen`: prepare inputs, (re)generate answers, capture hidden states, commit shards.

Everything that can be wrong with the inputs is checked before the store is touched; a run
that stops for any reason leaves the committed shards intact and the same command continues.
"""

from __future__ import annotations

import time
from pathlib import Path

from speculators_kit.core.build import default_aux_layers, target_config
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.fingerprint import target_fingerprint
from speculators_kit.core.store import StoreManifest, sample_id
from speculators_kit.datagen import self_chat
from speculators_kit.datagen.prepare import Prepared, load_tokenizer, prepare, read_records
from speculators_kit.datagen.writer import StoreWriter, check_setup
from speculators_kit.target.embedded import resolve_target
from speculators_kit.train.ds import native_bf16

STAGING = ".staging"


def resolve_layers(layers, num_layers: int) -> list[int]:
    """Aux layer ids then the last layer (num_layers), as the store keeps them."""
    ids = default_aux_layers(num_layers) if layers == "auto" else list(layers)
    bad = [i for i in ids if not 0 <= i <= num_layers]
    if bad:
        raise SpecKitError(f"capture.layers {bad} out of range: the target has {num_layers} "
                           f"layers, so ids go from 0 (embeddings) to {num_layers}")
    return sorted(set(ids) | {num_layers})


def resolve_model_dtype(name: str) -> str:
    """`auto`: bf16 where the hardware computes in it (as `precision: auto` in training), else fp32.
    Emulated bf16 is slower than fp32; with AMX bf16 captured 2.28x faster and trained drafts as
    good (benchmarks/results/capture_model_dtype.*)."""
    if name != "auto":
        return name
    return "bfloat16" if native_bf16() else "float32"


def build_manifest(cfg, target: Path) -> StoreManifest:
    tcfg = target_config(target)
    num_layers = tcfg["num_hidden_layers"]
    return StoreManifest(
        target_fingerprint=target_fingerprint(target), target_name=cfg.target.path,
        num_target_layers=num_layers, layer_ids=resolve_layers(cfg.capture.layers, num_layers),
        dtype=cfg.capture.dtype, hidden_size=tcfg["hidden_size"], vocab_size=tcfg["vocab_size"],
        provenance={"created_by": "speckit datagen", "backend": cfg.capture.backend,
                    "model_dtype": resolve_model_dtype(cfg.capture.model_dtype),
                    "data": cfg.data.model_dump(), "regenerate": cfg.regenerate.model_dump()},
    )


def make_backend(cfg, target: Path, layer_ids: list[int], store_dir: Path):
    c = cfg.capture
    model_dtype = resolve_model_dtype(c.model_dtype)
    if c.backend == "vllm":
        from speculators_kit.datagen.vllm_backend import VLLMCapture, vllm_version_or_error

        vllm_version_or_error()
        return VLLMCapture(target, layer_ids, store_dir / STAGING, cfg.data.max_length, c.batch_size,
                           model_dtype, cfg.data.seed)
    from speculators_kit.datagen.hf_backend import HFCapture

    return HFCapture(target, layer_ids, cfg.data.max_length, model_dtype, cfg.data.seed)


class _Engine:
    """The capture backend, started on first use (a resumed run may need none)."""

    def __init__(self, cfg, target: Path, layer_ids: list[int], out_dir: Path):
        self.args, self.backend = (cfg, target, layer_ids, out_dir), None

    def get(self):
        if self.backend is None:
            self.backend = make_backend(*self.args)
        return self.backend

    def close(self) -> None:
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()
        self.backend = None


def run(cfg, config_dir: Path, overwrite: bool = False, log=print) -> dict:
    target = resolve_target(cfg.target.path)
    _check_context(cfg.data.max_length, target)
    manifest = build_manifest(cfg, target)
    if cfg.capture.model_dtype == "auto":
        log(f"capture.model_dtype auto: the target computes in {manifest.provenance['model_dtype']} here")
    out_dir = Path(cfg.output.dir).expanduser()  # relative to the working directory
    engine = _Engine(cfg, target, manifest.layer_ids, out_dir)
    try:
        return _run(cfg, config_dir, overwrite, log, target, manifest, out_dir, engine)
    finally:
        engine.close()


def _check_context(max_length: int, target: Path) -> None:
    """vLLM refuses a longer max_model_len with a page of traceback; the HF backend would run
    positions the target never learned."""
    context = target_config(target).get("max_position_embeddings")
    if context is not None and max_length > context:
        raise SpecKitError(f"data.max_length {max_length} is longer than the target's context "
                           f"(max_position_embeddings {context} in {target}/config.json): set "
                           f"data.max_length to {context} or less")


def _run(cfg, config_dir, overwrite, log, target, manifest, out_dir, engine) -> dict:
    if not overwrite:  # before the target writes any questions
        check_setup(out_dir, manifest)
    tokenizer = load_tokenizer(target)
    data, key = cfg.data, None
    if cfg.data.source == "self":
        data = cfg.data.model_copy(update={"format": "chat"})
        key = {"seed": data.seed, "limit": data.limit, "target": manifest.target_fingerprint}
        if data.lead_ins:  # only when set: caches made before lead_ins existed stay valid
            key["lead_ins"] = self_chat.lead_ins(data)
        records = self_chat.cached(out_dir, 1, key, lambda: self_chat.first_questions(
            engine.get(), tokenizer, data))
    else:
        records = read_records(cfg.data, config_dir)
    items, dropped = prepare(records, tokenizer, data, cfg.regenerate.enabled)
    _log_dropped(dropped, data.max_length, log)
    _check_token_range(items, manifest.vocab_size)
    if not items:
        raise SpecKitError(f"no usable samples in {cfg.data.path} (dropped: {dropped})")
    caches = tuple(self_chat.cache_name(t) for t in range(1, data.turns + 1))
    writer = StoreWriter(out_dir, manifest, overwrite=overwrite, keep=caches)
    totals = _capture_new(cfg, writer, items, engine, out_dir, log, "turn 1" if data.turns > 1 else "")
    for turn in range(2, data.turns + 1):
        records = self_chat.cached(out_dir, turn, {**key, "turn": turn}, lambda r=records, t=turn: (
            self_chat.follow_ups(engine.get(), tokenizer, self_chat.answered(r, tokenizer, out_dir), data, t)))
        items, more = prepare(records, tokenizer, data, True)
        _log_dropped(more, data.max_length, log)
        dropped = {k: dropped[k] + more[k] for k in dropped}
        part = _capture_new(cfg, writer, items, engine, out_dir, log, f"turn {turn}")
        totals = {k: totals[k] + part[k] for k in totals}
    writer.finish()
    if cfg.capture.backend == "vllm":
        from speculators_kit.datagen.vllm_backend import cleanup

        cleanup(out_dir / STAGING)
    stats = _stats(totals, dropped=dropped, store=str(out_dir), samples_in_store=writer.manifest.num_samples)
    log(f"datagen done: {stats['samples']} new samples, {stats['tokens']} tokens in "
        f"{stats['seconds']:.1f} s ({stats['tokens_per_s']:.0f} tok/s), "
        f"{stats['bytes_per_token']:.0f} bytes/token; store has {stats['samples_in_store']} samples")
    return stats


def _log_dropped(dropped: dict, max_length: int, log) -> None:
    """Inputs left out before capture, said when it happens rather than only in --json's stats."""
    why = {"too_long": f"too long for data.max_length {max_length} (no room left for an answer)",
           "no_loss_tokens": f"with no answer tokens within data.max_length {max_length}",
           "duplicates": "duplicate(s) of an earlier input"}
    parts = [f"{n} {why[k]}" for k, n in dropped.items() if n]
    if parts:
        log(f"datagen: left out {'; '.join(parts)}")


def _stats(totals: dict, **extra) -> dict:
    tokens, seconds = totals["tokens"], totals["seconds"]
    return {"samples": totals["samples"], "tokens": tokens, "seconds": seconds, "startup_s": totals["startup_s"],
            "tokens_per_s": tokens / max(seconds, 1e-9),
            "bytes_per_token": totals["bytes"] / tokens if tokens else 0.0, **extra}


def _capture_new(cfg, writer, items, engine, out_dir, log, label: str) -> dict:
    done = writer.done_source_ids()
    todo = [it for it in items if it.source_id not in done]
    log(f"datagen{' ' + label if label else ''}: {len(items)} inputs ({len(items) - len(todo)} already in "
        f"{out_dir}), layers {writer.manifest.layer_ids}, {writer.manifest.dtype}, backend {cfg.capture.backend}")
    return _capture_all(cfg, writer, todo, engine, items)


def _capture_all(cfg, writer, todo, engine, items) -> dict:
    from tqdm import tqdm

    regen = cfg.regenerate if cfg.regenerate.enabled else None
    prepared = {it.source_id: it for it in items}
    seen = writer.done_sample_ids()
    tokens = nbytes = samples = 0
    t0 = time.perf_counter()
    backend, capture_regen, startup = None, regen, 0.0  # throughput excludes model loads and engine starts
    if todo:
        backend = engine.get()
        startup = time.perf_counter() - t0  # the HF backend loads its model here
        before = backend.startup_s  # vLLM's engines start when first used
        todo, capture_regen = backend.start_capture(todo, regen)
        startup += backend.startup_s - before
    # closed on an error too, so the error starts its own line
    with tqdm(total=len(todo), unit="sample", desc="capture", dynamic_ncols=True) as bar:
        for lo in range(0, len(todo), cfg.output.shard_samples):
            chunk = todo[lo: lo + cfg.output.shard_samples]
            records = []
            for item, rec in zip(chunk, backend.capture(chunk, capture_regen)):
                rec.update(_finish(prepared[item.source_id], rec, regen is not None))
                if rec["loss_mask"].any() and rec["sample_id"] not in seen:
                    seen.add(rec["sample_id"])
                    records.append(rec)
            if records:
                info = writer.add_shard(records)
                tokens, nbytes, samples = tokens + info.num_tokens, nbytes + info.bytes, samples + len(records)
            bar.update(len(chunk))
            rate = tokens / max(time.perf_counter() - t0 - startup, 1e-9)
            bar.set_postfix(tokens=tokens, tok_s=f"{rate:.0f}")
    return {"samples": samples, "tokens": tokens, "bytes": nbytes,
            "seconds": time.perf_counter() - t0 - startup, "startup_s": startup}


def _finish(item: Prepared, rec: dict, regenerated: bool) -> dict:
    import torch

    ids = rec["token_ids"]
    prompt = item.token_ids
    if ids[: len(prompt)].tolist() != prompt:
        raise SpecKitError(f"sample {item.source_id}: the backend returned tokens that do not "
                           f"start with the prompt; the capture is inconsistent")
    if regenerated:
        mask = torch.zeros(len(ids), dtype=torch.bool)
        mask[len(prompt):] = True
    else:
        mask = torch.tensor(item.loss_mask, dtype=torch.bool)
    return {"loss_mask": mask, "sample_id": sample_id(ids), "source_id": item.source_id}


def _check_token_range(items: list[Prepared], vocab_size: int) -> None:
    for it in items:
        if it.token_ids and max(it.token_ids) >= vocab_size:
            raise SpecKitError(f"a sample has token id {max(it.token_ids)} >= the target's vocab "
                               f"size {vocab_size}; were the token ids made for another tokenizer?")

