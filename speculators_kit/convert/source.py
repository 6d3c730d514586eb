"""Read a source checkpoint folder (or file) safely: config.json plus weights from
model.safetensors (sharded or not), pytorch_model.bin or *.pt loaded with weights_only=True."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from speculators_kit.core.errors import SpecKitError


def read_source(src: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    src = Path(src)
    if not src.exists():
        raise SpecKitError(f"source {src} does not exist")
    folder = src if src.is_dir() else src.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        where = f"{src} is a file and its folder {folder.resolve()} has" if src.is_file() else f"{src} has"
        raise SpecKitError(f"{where} no config.json: a source checkpoint is a folder with config.json "
                           f"and weights (or a weight file beside its config.json)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise SpecKitError(f"{config_path} is not valid JSON: {err}") from err
    return config, _weights(src if src.is_file() else folder)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    if path.is_file():
        return _load_file(path)
    index = next((path / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (path / n).is_file()), None)
    if index is not None:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for name in files:
            out.update(_load_file(path / name))
        return out
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "pytorch_model.pt"):
        if (path / name).is_file():
            return _load_file(path / name)
    raise SpecKitError(f"{path} holds no weights (model.safetensors, pytorch_model.bin or *.pt)")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpecKitError(f"weight file {path} is missing")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SpecKitError(f"{path} is a pickle that needs code to load; refusing it (only plain "
                           f"tensors are read, with torch.load(weights_only=True)). Re-save it "
                           f"as safetensors where you trust it") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecKitError(f"{path} does not hold a flat name -> tensor state dict")
    return state
