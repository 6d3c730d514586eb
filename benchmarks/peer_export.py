"""Write our hidden-state stores in the `speculators` package's (0.9) training layout, so
the peer trains on exactly the samples and hidden states ours does (our training split: the
samples our trainer holds out for its own eval are left out here too):

    DIR/              a `datasets` table (save_to_disk): input_ids, loss_mask, seq_len
    DIR/hidden_states/hs_{i}.safetensors   token_ids [T], hidden_states [T, aux layers + last, H]
    DIR/d2t-N.npy, DIR/t2d-N.npy           a draft's vocabulary mapping (the same one ours uses)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from speculators_kit.core.store import StoreReader
from speculators_kit.train.data import check_filled, split


def export_stores(stores: list[Path], out: Path, draft: Path | None = None, eval_fraction: float = 0.05,
                  max_length: int = 1024) -> int:
    """eval_fraction and max_length: our training run's data settings, which decide its split."""
    import datasets

    readers = [StoreReader(store) for store in stores]
    for store, reader in zip(stores, readers):
        check_filled(store, reader)  # what our training refuses (empty, unfinished), the peer must not get
    train, _ = split(readers, eval_fraction, max_length)
    (out / "hidden_states").mkdir(parents=True, exist_ok=True)
    rows = {"input_ids": [], "loss_mask": [], "seq_len": []}
    for n, ref in enumerate(train):
        sample = readers[ref.store][ref.index]
        save_file({"token_ids": sample["token_ids"].contiguous(),
                   "hidden_states": sample["hidden"].to(torch.bfloat16).contiguous()},
                  str(out / "hidden_states" / f"hs_{n}.safetensors"))
        rows["input_ids"].append(sample["token_ids"].tolist())
        rows["loss_mask"].append(sample["loss_mask"].long().tolist())
        rows["seq_len"].append(len(sample["token_ids"]))
    table = datasets.Dataset.from_dict(rows)
    table.set_format("torch")
    table.save_to_disk(str(out))
    if draft is not None:
        weights = load_file(str(draft / "model.safetensors"))
        n = weights["d2t"].shape[0]
        np.save(out / f"d2t-{n}.npy", weights["d2t"].numpy())
        np.save(out / f"t2d-{n}.npy", weights["t2d"].bool().numpy())
    return len(train)
