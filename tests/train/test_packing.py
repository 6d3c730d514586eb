"""Packed micro-batches: every sample once, rows that fit, and the same loss as padding."""

import random
from pathlib import Path

import pytest
import torch

from speculators_kit.core.build import draft_config_for_target, init_draft
from speculators_kit.core.store import StoreReader
from speculators_kit.core.vocab import apply_draft_vocab, select_draft_vocab
from speculators_kit.schema import LossSection
from speculators_kit.train import data
from speculators_kit.train.objective import DraftTrainModule


def refs_of(lengths):
    return [data.Ref(0, i, n) for i, n in enumerate(lengths)]


def fill(batches, cap):
    """Real tokens / tokens allocated (rows x the longest row of their batch)."""
    real = alloc = 0
    for batch in batches:
        rows = [sum(min(r.length, cap) for r in row) for row in batch]
        real += sum(rows)
        alloc += len(rows) * max(rows)
    return real / alloc


def test_packed_batches_hold_every_sample_once_in_rows_that_fit():
    rng = random.Random(0)
    refs = refs_of([rng.randint(40, 1400) for _ in range(500)])  # some longer than max_length
    tokens, max_length = 2048, 1024
    packed = data.batches(refs, tokens, max_length, seed=3, epoch=1, pack=True)
    seen = sorted(r.index for batch in packed for row in batch for r in row)
    assert seen == list(range(len(refs)))
    for batch in packed:
        assert 1 <= len(batch) <= tokens // max_length
        assert all(sum(min(r.length, max_length) for r in row) <= max_length for row in batch)
    assert packed == data.batches(refs, tokens, max_length, seed=3, epoch=1, pack=True)
    assert packed != data.batches(refs, tokens, max_length, seed=3, epoch=2, pack=True)
    padded = data.batches(refs, tokens, max_length, seed=3, epoch=1)
    assert all(len(row) == 1 for batch in padded for row in batch)
    assert fill(packed, max_length) > fill(padded, max_length)


@pytest.fixture(scope="module")
def module(tiny_llama, tiny_store):
    reader = StoreReader(tiny_store)
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, 96, reader.manifest.aux_layer_ids, 5)
    head = init_draft(cfg, tiny_llama, "random", seed=1)
    apply_draft_vocab(head, select_draft_vocab(torch.arange(256).flip(0), 96, [2]))
    loss_cfg = LossSection(kind="kl", ttt_steps=3, step_weights="uniform")
    return DraftTrainModule(head, Path(tiny_llama), loss_cfg).eval(), reader


@pytest.mark.parametrize("max_length", [256, 45])  # 45: samples (53-55) truncated in their row
@pytest.mark.parametrize("whole_sample_trained", [False, True])
def test_a_packed_row_trains_exactly_like_padded_rows(module, max_length, whole_sample_trained):
    """Document masks and chains kept inside their sample: the loss and the acceptance counts
    of one packed row equal those of the same samples padded. whole_sample_trained: every
    position is trained (as for plain text), so chains ending past a sample would count."""
    module, reader = module
    refs = [data.Ref(0, i, reader.length(i)) for i in (0, 5, 9, 14)]
    packed = data.collate([reader], [refs], max_length)
    padded = data.collate([reader], [[r] for r in refs], max_length)
    if whole_sample_trained:
        for batch in (packed, padded):
            batch["dist_mask"] = batch["valid"].clone()
    assert packed["token_ids"].shape[0] == 1 and packed["doc"].max() == 3
    with torch.no_grad():
        loss_packed, stats_packed = module(packed, chain=5)
        loss_padded, stats_padded = module(padded, chain=5)
    assert loss_packed == pytest.approx(float(loss_padded), rel=1e-5)
    assert torch.equal(stats_packed, stats_padded)
    assert stats_packed[0] > 0  # some full 5-token chains were counted


def test_the_data_line_says_what_max_length_cuts_and_leaves_out(tiny_store):
    reader = StoreReader(tiny_store)
    lengths = [reader.length(i) for i in range(len(reader))]
    starts = [int(reader.loss_mask(i).nonzero()[0]) for i in range(len(reader))]  # first answer token
    full = data.describe([reader], *data.split([reader], 0.2, max(lengths)), max(lengths))
    assert "cut to it" not in full and "left out" not in full
    ml = sorted(starts)[len(starts) // 2]  # half the answers start past it
    train, held = data.split([reader], 0.2, ml)
    line = data.describe([reader], train, held, ml)
    left_out = sum(s >= ml for s in starts)
    assert left_out and len(train) + len(held) == len(reader) - left_out
    assert f"{len(reader) - left_out} sample(s) longer than data.max_length {ml} are cut to it" in line, line
    assert f"; {left_out} left out (their answers start past data.max_length {ml})" in line, line
    assert f"({sum(min(r.length, ml) for r in train)} tokens)" in line
