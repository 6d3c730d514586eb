"""The hidden-state store: schema, fp8 codec and the memory-mapped reader the trainer uses.

A store is a folder:

    manifest.json            StoreManifest (replaced atomically after every shard)
    token_freq.safetensors   counts of loss-masked target token ids (for draft vocab reduction)
    shard-00000.safetensors  token_ids int32 [T], loss_mask uint8 [T], offsets int64 [n+1],
                             hidden [T, layers, H] (bf16 | fp16 | fp32 | float8_e4m3fn),
                             scale fp32 [T, layers] (fp8 only: hidden = fp8 * scale)

`layer_ids` count as vLLM does: id k is the output of k decoder layers (0 = embeddings); the
last id is always the number of target layers, stored *before* the final norm, so a trainer
gets the target's next-token distribution as lm_head(norm(hidden[:, -1])).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open

from speculators_kit.core.errors import SpecKitError

# What a failed write raises: safetensors reports a full disk as its own error, not an OSError.
WRITE_ERRORS = (OSError, SafetensorError)
LOW_DISK_BYTES = 64 << 20  # this little left after a write failed: the write filled the disk


def full_disk(path: Path) -> str | None:
    """After a failed write, what to tell the user when the disk holding `path` is (nearly) full:
    libraries say it differently (OSError 28, safetensors' own error, torch's `iostream error`,
    a vLLM worker that died of it), so ask the disk."""
    import shutil

    folder = Path(path)
    while not folder.exists():
        folder = folder.parent
    if shutil.disk_usage(folder).free >= LOW_DISK_BYTES:
        return None
    return f"the disk holding {path} is full: free space there (`df -h {folder}`)"

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKEN_FREQ = "token_freq.safetensors"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "fp8": torch.float8_e4m3fn}
FP8_MAX = 448.0  # largest finite float8_e4m3fn


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str
    bytes: int
    num_tokens: int
    sample_ids: list[str]
    source_ids: list[str]  # ids of the prepared inputs, so a resumed run can skip them


class StoreManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    target_fingerprint: str
    target_name: str
    num_target_layers: int
    layer_ids: list[int]  # aux layers, then the last layer
    dtype: str
    hidden_size: int
    vocab_size: int
    shards: list[ShardInfo] = Field(default_factory=list)
    provenance: dict = Field(default_factory=dict)
    # False from a datagen run's first new shard until that run has captured every input (a
    # training must not read a store still being written, or one whose run died); None in
    # stores written before this was recorded.
    complete: bool | None = None

    @property
    def aux_layer_ids(self) -> list[int]:
        return self.layer_ids[:-1]

    @property
    def num_samples(self) -> int:
        return sum(len(s.sample_ids) for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    def compatible_with(self, other: StoreManifest) -> list[str]:
        """Fields that differ in a way that makes the two stores unmixable."""
        keys = ("format_version", "target_fingerprint", "layer_ids", "dtype", "hidden_size")
        return [k for k in keys if getattr(self, k) != getattr(other, k)]


def sample_id(token_ids) -> str:
    """Deterministic id of a token sequence: the same tokens always get the same id."""
    data = torch.as_tensor(token_ids, dtype=torch.int32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:20]


def encode_hidden(hidden: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    """[T, layers, H] float -> stored tensors. fp8 keeps a per-(token, layer) absmax scale."""
    if dtype != "fp8":
        return {"hidden": hidden.to(DTYPES[dtype]).contiguous()}
    hidden = hidden.float()
    scale = hidden.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
    quantized = (hidden / scale[..., None]).to(torch.float8_e4m3fn)
    return {"hidden": quantized.contiguous(), "scale": scale.contiguous()}


def decode_hidden(hidden: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return hidden.float()
    return hidden.float() * scale[..., None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(store_dir: str | Path) -> StoreManifest:
    path = Path(store_dir) / MANIFEST
    if not Path(store_dir).is_dir():
        raise SpecKitError(f"store {store_dir} does not exist (run `speckit datagen` to make one)")
    if not path.is_file():
        raise SpecKitError(f"{path} is missing: {store_dir} is not a hidden-state store")
    try:
        manifest = StoreManifest.model_validate_json(path.read_text())
    except ValueError as err:
        raise SpecKitError(f"{path} is not a valid store manifest: {err}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise SpecKitError(f"{path}: store format {manifest.format_version}, this speckit reads "
                           f"{FORMAT_VERSION}; regenerate the store with this version")
    return manifest


class StoreReader:
    """Random access to samples of one store; shards are memory-mapped, hidden states decoded
    to fp32 on read."""

    def __init__(self, store_dir: str | Path):
        self.dir = Path(store_dir)
        self.manifest = read_manifest(self.dir)
        self._index = []  # sample -> (shard number, position in shard)
        for n, shard in enumerate(self.manifest.shards):
            if not (self.dir / shard.name).is_file():
                raise SpecKitError(f"{self.dir / shard.name} is listed in the manifest but missing; "
                                   f"re-run datagen on this store to rebuild it")
            self._index += [(n, i) for i in range(len(shard.sample_ids))]
        self._files = {}
        self._offsets = {}

    def __len__(self) -> int:
        return len(self._index)

    def sample_ids(self) -> list[str]:
        return [sid for shard in self.manifest.shards for sid in shard.sample_ids]

    def _open(self, n: int):
        if n not in self._files:
            f = safe_open(str(self.dir / self.manifest.shards[n].name), framework="pt")
            self._files[n] = f
            self._offsets[n] = f.get_tensor("offsets").tolist()
        return self._files[n], self._offsets[n]

    def length(self, index: int) -> int:
        n, i = self._index[index]
        _, offsets = self._open(n)
        return offsets[i + 1] - offsets[i]

    def loss_mask(self, index: int) -> torch.Tensor:
        n, i = self._index[index]
        f, offsets = self._open(n)
        return f.get_slice("loss_mask")[offsets[i]:offsets[i + 1]].bool()

    def token_ids(self, index: int) -> torch.Tensor:
        n, i = self._index[index]
        f, offsets = self._open(n)
        return f.get_slice("token_ids")[offsets[i]:offsets[i + 1]].long()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n, i = self._index[index]
        f, offsets = self._open(n)
        start, end = offsets[i], offsets[i + 1]
        scale = f.get_slice("scale")[start:end] if "scale" in f.keys() else None  # noqa: SIM118
        return {
            "token_ids": f.get_slice("token_ids")[start:end].long(),
            "loss_mask": f.get_slice("loss_mask")[start:end].bool(),
            "hidden": decode_hidden(f.get_slice("hidden")[start:end], scale),
        }

    def token_freq(self) -> torch.Tensor:
        """Counts of loss-masked token ids; recounted when the cached file is stale."""
        path = self.dir / TOKEN_FREQ
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("num_shards") == str(len(self.manifest.shards)):
                    return f.get_tensor("counts")
        counts = torch.zeros(self.manifest.vocab_size, dtype=torch.int64)
        for n in range(len(self.manifest.shards)):
            f, _ = self._open(n)
            ids = f.get_tensor("token_ids").long()[f.get_tensor("loss_mask").bool()]
            counts += torch.bincount(ids, minlength=len(counts))[: len(counts)]
        return counts

    def verify(self) -> list[str]:
        """Problems found by re-hashing every shard against the manifest (empty = all good)."""
        problems = []
        for shard in self.manifest.shards:
            path = self.dir / shard.name
            if not path.is_file():
                problems.append(f"{shard.name}: missing")
            elif file_sha256(path) != shard.sha256:
                problems.append(f"{shard.name}: sha256 mismatch (corrupt or modified)")
        return problems


def write_json_atomic(path: Path, data: dict) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
