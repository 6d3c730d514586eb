"""The store: round trip, fp8 error bound, crash consistency, verification."""

import json

import pytest
import torch

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.store import (
    MANIFEST,
    StoreManifest,
    StoreReader,
    decode_hidden,
    encode_hidden,
    sample_id,
)
from speculators_kit.datagen.writer import StoreWriter

H, LAYERS, VOCAB = 16, 3, 50


def manifest(**kw):
    base = {"target_fingerprint": "sha256:abc", "target_name": "t", "num_target_layers": 4,
            "layer_ids": [1, 2, 4], "dtype": "fp32", "hidden_size": H, "vocab_size": VOCAB}
    return StoreManifest(**{**base, **kw})


def record(seed, length=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (length,), generator=g)
    mask = torch.arange(length) >= length // 2
    return {"token_ids": ids, "loss_mask": mask, "hidden": torch.randn(length, LAYERS, H, generator=g),
            "sample_id": sample_id(ids), "source_id": f"src{seed}"}


def test_round_trip_by_sample_with_token_counts(tmp_path):
    w = StoreWriter(tmp_path / "s", manifest())
    recs = [record(i, 5 + i) for i in range(5)]
    w.add_shard(recs[:2])
    w.add_shard(recs[2:])
    r = StoreReader(tmp_path / "s")
    assert len(r) == 5 and r.sample_ids() == [x["sample_id"] for x in recs]
    for i, rec in enumerate(recs):
        got = r[i]
        assert torch.equal(got["token_ids"], rec["token_ids"]) and torch.equal(got["loss_mask"], rec["loss_mask"])
        assert torch.equal(got["hidden"], rec["hidden"])
        assert r.length(i) == len(rec["token_ids"])
    expected = torch.zeros(VOCAB, dtype=torch.int64)
    for rec in recs:
        expected += torch.bincount(rec["token_ids"][rec["loss_mask"]], minlength=VOCAB)
    assert torch.equal(r.token_freq(), expected)
    assert r.verify() == []


def test_fp8_round_trip_error_is_bounded_per_token_and_layer():
    # Rows with very different scales (as hidden layers have): each keeps its own scale.
    hidden = torch.randn(64, LAYERS, 256) * torch.tensor([0.01, 1.0, 300.0])[None, :, None]
    enc = encode_hidden(hidden, "fp8")
    assert enc["hidden"].dtype == torch.float8_e4m3fn and enc["scale"].shape == (64, LAYERS)
    back = decode_hidden(enc["hidden"], enc["scale"])
    rel = (back - hidden).abs().amax(-1) / hidden.abs().amax(-1)
    assert rel.max() < 2 ** -4  # e4m3 keeps 3 mantissa bits: half-ulp at the top is 1/16
    cos = torch.nn.functional.cosine_similarity(back, hidden, dim=-1)
    assert cos.min() > 0.995
    bf16 = decode_hidden(encode_hidden(hidden, "bf16")["hidden"], None)
    assert (bf16 - hidden).abs().max() < (back - hidden).abs().max()  # fp8 really is coarser


def test_reopen_drops_an_uncommitted_shard_and_keeps_committed_ones(tmp_path):
    w = StoreWriter(tmp_path / "s", manifest())
    w.add_shard([record(0)])
    # A crash after the shard rename but before the manifest: a shard the manifest does not list.
    (tmp_path / "s" / "shard-00001.safetensors").write_bytes(b"half written")
    (tmp_path / "s" / ".shard-00002.safetensors.tmp").write_bytes(b"x")
    w2 = StoreWriter(tmp_path / "s", manifest())
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [MANIFEST, "shard-00000.safetensors",
                                                                  "token_freq.safetensors"]
    assert w2.done_source_ids() == {"src0"}
    w2.add_shard([record(1)])
    assert len(StoreReader(tmp_path / "s")) == 2 and StoreReader(tmp_path / "s").verify() == []


def test_a_store_is_unfinished_from_its_first_new_shard_until_the_run_finishes(tmp_path):
    w = StoreWriter(tmp_path / "s", manifest())
    assert StoreReader(tmp_path / "s").manifest.complete is None  # nothing written yet
    w.add_shard([record(0)])
    assert StoreReader(tmp_path / "s").manifest.complete is False
    w.finish()
    assert StoreReader(tmp_path / "s").manifest.complete is True
    again = StoreWriter(tmp_path / "s", manifest())  # a resumed or extended run
    assert StoreReader(tmp_path / "s").manifest.complete is True  # until it adds something
    again.add_shard([record(1)])
    assert StoreReader(tmp_path / "s").manifest.complete is False


@pytest.mark.parametrize("free_pages", range(9))
def test_a_full_disk_leaves_the_store_consistent_and_resumable(tmp_path, free_pages):
    """The disk fills during the shard, its token counts or the manifest (by how much room is
    left): one error with the way on, nothing half-written, and the run goes on once there is
    room. Before, safetensors' own error for a full disk escaped as a traceback."""
    from tests.helpers import fill_disk, small_disk

    with small_disk(tmp_path / "disk", 512) as disk:
        w = StoreWriter(disk / "s", manifest())
        w.add_shard([record(0, length=100)])
        before = (disk / "s" / MANIFEST).read_text()
        ballast = fill_disk(disk, free_pages * 4096)
        try:
            w.add_shard([record(1, length=100)])
            assert len(StoreReader(disk / "s")) == 2  # there was room
        except SpecKitError as err:
            assert "No space left on device" in str(err) and "re-run the same command" in str(err)
            assert (disk / "s" / MANIFEST).read_text() == before
            assert not [p for p in (disk / "s").iterdir() if p.name.endswith(".tmp")]
            ballast.unlink()
            StoreWriter(disk / "s", manifest()).add_shard([record(1, length=100)])  # the same run goes on
        r = StoreReader(disk / "s")
        assert len(r) == 2 and r.verify() == []
        assert r.token_freq().sum() == 100  # the answer halves of both samples, once each


def test_store_from_another_setup_is_refused_unless_overwrite(tmp_path):
    w = StoreWriter(tmp_path / "s", manifest())
    w.add_shard([record(0)])
    with pytest.raises(SpecKitError, match="another setup.*target_fingerprint.*--overwrite"):
        StoreWriter(tmp_path / "s", manifest(target_fingerprint="sha256:other"))
    with pytest.raises(SpecKitError, match="dtype: store has 'fp32', config asks 'bf16'"):
        StoreWriter(tmp_path / "s", manifest(dtype="bf16"))
    assert len(StoreReader(tmp_path / "s")) == 1
    fresh = StoreWriter(tmp_path / "s", manifest(dtype="bf16"), overwrite=True)
    assert fresh.manifest.shards == []


def test_verify_finds_a_flipped_byte_and_inspect_fails(tmp_path):
    from speculators_kit.cli import main

    w = StoreWriter(tmp_path / "s", manifest())
    w.add_shard([record(0)])
    shard = tmp_path / "s" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "sha256 mismatch" in StoreReader(tmp_path / "s").verify()[0]
    assert main(["inspect", str(tmp_path / "s"), "--verify"]) == 1


def test_a_folder_that_is_not_a_store_is_left_alone(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(SpecKitError, match="not empty and is not a store"):
        StoreWriter(tmp_path / "s", manifest())
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(SpecKitError, match="not a valid store manifest"):
        StoreReader(bad)


def test_what_counts_as_another_dataset(tmp_path):
    """A store grows by data.limit; other data or answers are another store's. Keys a store
    predates count as their defaults, and unused answer settings do not count."""
    from speculators_kit.datagen.writer import setup_differences

    data = {"source": "jsonl", "path": "a.jsonl", "prompt_field": "q", "limit": 10, "max_length": 512}
    answers = {"enabled": False, "max_new_tokens": 256, "temperature": 0.0}
    StoreWriter(tmp_path / "s", manifest(provenance={"data": data, "regenerate": answers}))

    def differences(data_change=None, answer_change=None):
        made = manifest(provenance={"data": {**data, **(data_change or {})},
                                    "regenerate": {**answers, **(answer_change or {})}})
        return setup_differences(tmp_path / "s", made)

    assert differences({"limit": 1000, "max_length": 1024}) == []
    assert differences({"lead_ins": [], "turns": 1}) == []  # the defaults of keys added since
    assert differences({"turns": 2}) == ["data.turns: store has 1, config asks 2"]
    assert differences({"path": "b.jsonl"}) == ["data.path: store has 'a.jsonl', config asks 'b.jsonl'"]
    assert differences(answer_change={"max_new_tokens": 64}) == []  # regeneration is off
    assert differences(answer_change={"enabled": True}) == ["regenerate.enabled: store has False, config asks True"]
    assert setup_differences(tmp_path / "none", manifest()) == []
