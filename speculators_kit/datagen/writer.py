"""Appends shards to a store so that a crash at any instant leaves it consistent.

Order of a commit: the shard is written under a temp name, fsynced and renamed; then the token
frequencies; then the manifest is replaced. A shard file the manifest does not list is an
interrupted commit and is removed when the store is reopened; samples listed in the manifest
are never re-made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.store import (
    MANIFEST,
    TOKEN_FREQ,
    WRITE_ERRORS,
    ShardInfo,
    StoreManifest,
    StoreReader,
    encode_hidden,
    file_sha256,
    read_manifest,
    write_json_atomic,
)
from speculators_kit.schema import DataSection, RegenerateSection

# A store grows by data.limit (and data.max_length only decides which inputs fit); any other
# data or regenerate setting makes other samples, which the manifest's provenance would not tell.
_GROWS = {"data": ("limit", "max_length"), "regenerate": ()}


def _default(section: str, key: str):
    """The value a store made before `key` existed was made with."""
    field = {"data": DataSection, "regenerate": RegenerateSection}[section].model_fields.get(key)
    return None if field is None else field.get_default(call_default_factory=True)


def _sample_changes(existing: StoreManifest, manifest: StoreManifest) -> list[str]:
    """Samples are keyed by their prompt, so a store re-run with other regenerate settings would
    skip every prompt it holds and keep the old answers without a word; one re-run with another
    dataset would mix it in under the first one's provenance."""
    changes = []
    for section, grows in _GROWS.items():
        old, new = existing.provenance.get(section), manifest.provenance.get(section)
        if not (isinstance(old, dict) and isinstance(new, dict)):  # stores from before it was recorded
            continue
        if section == "regenerate" and not (old.get("enabled") or new.get("enabled")):
            continue  # the dataset's own answers: the other regenerate keys are unused
        old = {k: old.get(k, _default(section, k)) for k in old.keys() | new.keys()}
        changes += [f"{section}.{k}: store has {old[k]!r}, config asks {new.get(k)!r}"
                    for k in sorted(old) if k not in grows and old[k] != new.get(k)]
    return changes


def _differences(existing: StoreManifest, manifest: StoreManifest) -> list[str]:
    return [f"{k}: store has {getattr(existing, k)!r}, config asks {getattr(manifest, k)!r}"
            for k in existing.compatible_with(manifest)] + _sample_changes(existing, manifest)


def setup_differences(store_dir: Path, manifest: StoreManifest) -> list[str]:
    """How the store at store_dir was made otherwise than `manifest` asks ([] if alike or absent)."""
    if not (store_dir / MANIFEST).is_file():
        return []
    return _differences(read_manifest(store_dir), manifest)


def check_setup(store_dir: Path, manifest: StoreManifest) -> StoreManifest | None:
    """The manifest of the store already at store_dir (None if there is none), refusing one made
    with another setup than `manifest`."""
    if not (store_dir / MANIFEST).is_file():
        return None
    existing = read_manifest(store_dir)
    details = _differences(existing, manifest)
    if details:
        raise SpecKitError(f"store {store_dir} was made with another setup ({', '.join(details)}); "
                           f"use another output.dir (a training reads several: data.stores) or pass --overwrite "
                           f"to replace it")
    return existing


class StoreWriter:
    def __init__(self, store_dir: str | Path, manifest: StoreManifest, overwrite: bool = False,
                 keep: tuple[str, ...] = ()):
        self.dir = Path(store_dir)
        if overwrite and (self.dir / MANIFEST).is_file():  # never delete a folder that is not a store
            for path in self.dir.iterdir():
                if path.name not in keep:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        existing = check_setup(self.dir, manifest)
        if existing is not None:
            self.manifest = existing
        else:
            if self.dir.exists() and any(p for p in self.dir.iterdir() if not p.name.startswith(".")):
                raise SpecKitError(f"{self.dir} exists, is not empty and is not a store; "
                                   f"choose another output.dir or pass --overwrite")
            self.dir.mkdir(parents=True, exist_ok=True)
            self.manifest = manifest
            with _committing(self.dir):
                write_json_atomic(self.dir / MANIFEST, manifest.model_dump())
        self._remove_uncommitted()
        self.counts = self._load_counts()

    def _remove_uncommitted(self) -> None:
        listed = {s.name for s in self.manifest.shards}
        for path in self.dir.iterdir():
            temp = path.name.startswith(".") and path.name.endswith(".tmp")
            if temp or (path.name.startswith("shard-") and path.name not in listed):
                path.unlink()

    def _load_counts(self) -> torch.Tensor:
        # Recounted from the committed shards: a crash between writing the counts and the
        # manifest would otherwise leave counts that include an uncommitted shard.
        return StoreReader(self.dir).token_freq()

    def done_source_ids(self) -> set[str]:
        return {sid for s in self.manifest.shards for sid in s.source_ids}

    def done_sample_ids(self) -> set[str]:
        return {sid for s in self.manifest.shards for sid in s.sample_ids}

    def add_shard(self, records: list[dict]) -> ShardInfo:
        """records: dicts with token_ids [T] long, loss_mask [T] bool, hidden [T, layers, H] float,
        sample_id, source_id. Returns the committed shard's info."""
        if not records:
            raise ValueError("empty shard")
        token_ids = torch.cat([r["token_ids"] for r in records]).to(torch.int32)
        loss_mask = torch.cat([r["loss_mask"] for r in records]).to(torch.uint8)
        lengths = torch.tensor([0] + [len(r["token_ids"]) for r in records])
        tensors = {"token_ids": token_ids, "loss_mask": loss_mask, "offsets": lengths.cumsum(0)}
        tensors.update(encode_hidden(torch.cat([r["hidden"] for r in records]), self.manifest.dtype))
        name = f"shard-{len(self.manifest.shards):05d}.safetensors"
        path = self.dir / name
        masked = token_ids[loss_mask.bool()].long()
        counts = self.counts + torch.bincount(masked, minlength=len(self.counts))[: len(self.counts)]
        with _committing(self.dir):  # the manifest commits the shard: a write before it may fail
            _save_atomic(tensors, path)
            info = ShardInfo(name=name, sha256=file_sha256(path), bytes=path.stat().st_size,
                             num_tokens=len(token_ids), sample_ids=[r["sample_id"] for r in records],
                             source_ids=[r["source_id"] for r in records])
            _save_atomic({"counts": counts}, self.dir / TOKEN_FREQ,
                         {"num_shards": str(len(self.manifest.shards) + 1)})
            manifest = self.manifest.model_copy(update={"shards": [*self.manifest.shards, info],
                                                        "complete": False})
            write_json_atomic(self.dir / MANIFEST, manifest.model_dump())
        self.manifest, self.counts = manifest, counts
        return info

    def finish(self) -> None:
        """Every input of this run is in the store: trainings may read it."""
        done = self.manifest.model_copy(update={"complete": True})
        with _committing(self.dir):
            write_json_atomic(self.dir / MANIFEST, done.model_dump())
        self.manifest = done


@contextlib.contextmanager
def _committing(store: Path):
    """A full disk or a lost permission mid-write: one error with the way on. A re-run drops
    what the manifest does not list, so the store stays as of its last committed shard."""
    try:
        yield
    except WRITE_ERRORS as err:
        raise SpecKitError(f"writing to the store {store} failed ({err}); it is unchanged up to "
                           f"its last committed shard: free space there (`df -h {store}`) or fix "
                           f"the cause, then re-run the same command to continue") from err


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WRITE_ERRORS:
        tmp.unlink(missing_ok=True)
        raise
