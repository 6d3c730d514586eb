"""Training data from hidden-state stores: checks, a stable held-out split, micro-batches
(padded, or packed with document masks).

Batch order is a pure function of (seed, epoch), so a resumed run replays exactly the batches
the interrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.store import StoreReader


@dataclass(frozen=True)
class Ref:
    store: int
    index: int
    length: int


def open_stores(paths: list[str], fingerprint: str, aux_layer_ids: list[int] | None) -> list[StoreReader]:
    """Readers for every store, refusing stores of another target or without the needed layers."""
    _refuse_repeats(paths)
    readers = [StoreReader(Path(p).expanduser()) for p in paths]
    first = readers[0].manifest
    for path, reader in zip(paths, readers):
        m = reader.manifest
        if m.target_fingerprint != fingerprint:
            raise SpecKitError(f"store {path} was made from another target ({m.target_name}, "
                               f"{m.target_fingerprint}); this run's target is {fingerprint}. "
                               f"Make the store with the same target (speckit datagen)")
        if m.layer_ids != first.layer_ids:
            raise SpecKitError(f"store {path} holds layers {m.layer_ids} but {paths[0]} holds "
                               f"{first.layer_ids}; all stores of one run must hold the same layers")
        check_filled(path, reader)
    if aux_layer_ids is not None and aux_layer_ids != first.aux_layer_ids:
        raise SpecKitError(f"the draft needs aux layers {aux_layer_ids} but the stores hold "
                           f"{first.aux_layer_ids} (+ last {first.layer_ids[-1]}); re-run datagen "
                           f"with capture.layers: {aux_layer_ids}")
    return readers


def _refuse_repeats(paths: list[str]) -> None:
    """A store listed twice (also as `store` and `./store/`) would silently count every sample twice."""
    seen: dict[Path, str] = {}
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise SpecKitError(f"data.stores lists the store {key} twice ({seen[key]!r} and {path!r}); "
                               f"list each store once")
        seen[key] = path


def check_filled(path, reader: StoreReader) -> None:
    """Refuses a store that is empty, or that a datagen run has not finished writing."""
    if len(reader) == 0:
        raise SpecKitError(f"store {path} is empty: run speckit datagen to fill it")
    if reader.manifest.complete is False:
        raise SpecKitError(f"store {path} is unfinished ({reader.manifest.num_samples} samples so far): its "
                           f"speckit datagen is still running or was stopped; wait for it, or re-run the same "
                           f"datagen command to finish the store (it resumes)")


def is_eval(sample_id: str, fraction: float) -> bool:
    """Held out by a hash of the sample id: stable when stores grow or are reordered."""
    return int(sample_id[:8], 16) / 16**8 < fraction


def split(readers: list[StoreReader], fraction: float, max_length: int) -> tuple[list[Ref], list[Ref]]:
    """Held-out and training samples; samples whose answer starts past max_length are left out
    (truncation would leave them nothing to learn)."""
    train, held, cut = [], [], 0
    for s, reader in enumerate(readers):
        for i, sid in enumerate(reader.sample_ids()):
            if not reader.loss_mask(i)[1:max_length].any():
                cut += 1
                continue
            (held if is_eval(sid, fraction) else train).append(Ref(s, i, reader.length(i)))
    if not train:
        raise SpecKitError(f"no training samples: {cut} sample(s) have no answer tokens within "
                           f"data.max_length {max_length}, the rest are held out; raise max_length, "
                           f"lower data.eval_fraction or add samples")
    return train, held


Batch = list[list[Ref]]  # rows; a row holds one sample, or several when packed


def batches(refs: list[Ref], tokens: int, max_length: int, seed: int, epoch: int,
            pack: bool = False) -> list[Batch]:
    """Micro-batches of at most `tokens` tokens, padding included, in a shuffled order.

    Unpacked: one sample per row, sorted by length inside windows of 64 so rows padded
    together are alike. Packed: several samples per row of min(max_length, tokens) tokens,
    kept apart by document masks, so a micro-batch carries real tokens instead of padding.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = refs[:]
    rng.shuffle(order)
    cap = min(max_length, tokens)
    out = _packed(order, cap, max(tokens // cap, 1)) if pack else _padded(order, cap, tokens)
    rng.shuffle(out)
    return out


def _padded(order: list[Ref], cap: int, tokens: int) -> list[Batch]:
    out, cur, longest = [], [], 0
    for w in range(0, len(order), 64):
        for ref in sorted(order[w: w + 64], key=lambda r: r.length):
            n = min(ref.length, cap)
            if cur and (len(cur) + 1) * max(longest, n) > tokens:
                out.append(cur)
                cur, longest = [], 0
            cur.append([ref])
            longest = max(longest, n)
    return out + [cur] if cur else out


def _packed(order: list[Ref], cap: int, rows_per_batch: int) -> list[Batch]:
    """First-fit decreasing inside windows of 64 samples, then consecutive rows grouped."""
    rows: list[list[Ref]] = []
    for w in range(0, len(order), 64):
        window, free = [], []
        for ref in sorted(order[w: w + 64], key=lambda r: -r.length):
            n = min(ref.length, cap)
            slot = next((i for i, f in enumerate(free) if f >= n), None)
            if slot is None:
                window.append([])
                free.append(cap)
                slot = len(window) - 1
            window[slot].append(ref)
            free[slot] -= n
        rows += window
    return [rows[i: i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def collate(readers: list[StoreReader], rows: Batch, max_length: int) -> dict[str, torch.Tensor]:
    """Padded batch. hidden: [B, T, layers, H]; dist_mask[b, p]: the target distribution at p
    is trained (p+1 is an answer token, or p is the last stored answer token: it predicts the
    end of the answer). doc[b, p]: which sample of row b position p belongs to (-1: padding);
    positions: the position inside that sample, as the draft sees it when serving."""
    samples = [[readers[r.store][r.index] for r in row] for row in rows]
    length = max(sum(_kept(s, max_length) for s in row) for row in samples)
    shape = (len(samples), length)
    batch = {"token_ids": torch.zeros(shape, dtype=torch.long),
             "hidden": torch.zeros(*shape, *samples[0][0]["hidden"].shape[1:]),
             "dist_mask": torch.zeros(shape, dtype=torch.bool),
             "doc": torch.full(shape, -1, dtype=torch.long),
             "positions": torch.zeros(shape, dtype=torch.long)}
    for b, row in enumerate(samples):
        at = 0
        for d, s in enumerate(row):
            n = _kept(s, max_length)
            span = slice(at, at + n)
            batch["token_ids"][b, span] = s["token_ids"][:n]
            batch["hidden"][b, span] = s["hidden"][:n]
            mask = s["loss_mask"][:n]
            batch["dist_mask"][b, at: at + n - 1] = mask[1:]
            batch["dist_mask"][b, at + n - 1] = mask[n - 1] and n == len(s["token_ids"])
            batch["doc"][b, span] = d
            batch["positions"][b, span] = torch.arange(n)
            at += n
    batch["valid"] = batch["doc"] >= 0
    return batch


def _kept(sample: dict, max_length: int) -> int:
    return min(len(sample["token_ids"]), max_length)


def describe(readers: list[StoreReader], train: list[Ref], held: list[Ref], max_length: int) -> str:
    """What training reads, including what data.max_length takes away (cut or left out)."""
    manifest, kept = readers[0].manifest, train + held
    tokens = sum(min(r.length, max_length) for r in train)
    longer, left_out = sum(r.length > max_length for r in kept), sum(map(len, readers)) - len(kept)
    lost = (f"; {longer} sample(s) longer than data.max_length {max_length} are cut to it" if longer else "") + (
        f"; {left_out} left out (their answers start past data.max_length {max_length})" if left_out else "")
    return (f"{len(train)} training samples ({tokens} tokens), {len(held)} held out{lost}; layers "
            f"{manifest.layer_ids}, {manifest.dtype}")
