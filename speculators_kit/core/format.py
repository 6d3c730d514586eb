"""Read and write draft directories in the speculator format (config.json + model.safetensors).

Weights are named as vLLM 0.32's EAGLE loaders expect (`fc`, `layers.N.*`, `norm`, `lm_head`,
`d2t` offsets, `t2d`). `embed_tokens` (and EAGLE-1's `lm_head`) are left out when they equal
the target's; loading takes them from the target's safetensors. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speculators_kit.core.config import SpeculatorConfig, parse_config
from speculators_kit.core.draft import DraftHead
from speculators_kit.core.errors import DiskFull, SpecKitError
from speculators_kit.core.fingerprint import target_fingerprint
from speculators_kit.core.store import full_disk

WEIGHTS = "model.safetensors"
# Target tensors a draft may share, by draft name -> candidate names in the target checkpoint.
SHARED = {
    "embed_tokens.weight": ("model.embed_tokens.weight", "embed_tokens.weight"),
    "lm_head.weight": ("lm_head.weight", "model.embed_tokens.weight"),  # tied targets
}


def read_config(draft_dir: str | os.PathLike) -> SpeculatorConfig:
    draft_dir = Path(draft_dir)
    path = draft_dir / "config.json"
    if not draft_dir.is_dir():
        what = "is a file, not a draft directory" if draft_dir.exists() else "does not exist"
        raise SpecKitError(f"draft directory {draft_dir} {what}")
    if not path.is_file():
        raise SpecKitError(f"{path} is missing: {draft_dir} is not a draft directory")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise SpecKitError(f"{path} is not valid JSON: {err}") from err
    return parse_config(data, str(path))


def load_target_tensors(target_dir: str | os.PathLike, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Read a few named tensors from a target's (possibly sharded) safetensors."""
    target_dir = Path(target_dir)
    index = target_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (target_dir / WEIGHTS).is_file():
        weight_map = None
    else:
        raise SpecKitError(f"{target_dir} holds no model.safetensors: cannot share target weights")
    out = {}
    for name in names:
        if weight_map is not None and name not in weight_map:
            continue
        shard = target_dir / (weight_map[name] if weight_map else WEIGHTS)
        with safe_open(str(shard), framework="pt") as f:
            if name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                out[name] = f.get_tensor(name)
    return out


def shared_target_weight(target_dir, draft_name: str) -> torch.Tensor | None:
    found = load_target_tensors(target_dir, SHARED[draft_name])
    for candidate in SHARED[draft_name]:
        if candidate in found:
            return found[candidate]
    return None


def check_against_target(cfg: SpeculatorConfig, target_dir, source: str) -> None:
    """Refuse a draft/target pair whose shapes or fingerprint disagree."""
    target_dir = Path(target_dir)
    tcfg = json.loads((target_dir / "config.json").read_text())
    tcfg = tcfg.get("text_config", tcfg)
    expected_hidden = cfg.target_hidden_size or cfg.layer.hidden_size
    if tcfg.get("hidden_size") != expected_hidden:
        raise SpecKitError(
            f"{source} expects target hidden size {expected_hidden}, but target {target_dir} has "
            f"{tcfg.get('hidden_size')}: this draft was made for another target"
        )
    if tcfg.get("vocab_size") != cfg.layer.vocab_size:
        raise SpecKitError(
            f"{source} expects target vocab {cfg.layer.vocab_size}, but target {target_dir} has "
            f"{tcfg.get('vocab_size')}: this draft was made for another target"
        )
    layers = tcfg.get("num_hidden_layers")
    for lid in cfg.eagle_aux_hidden_state_layer_ids or []:
        if layers is not None and not 0 <= lid <= layers:
            raise SpecKitError(f"{source}: aux layer id {lid} is outside the target's 0..{layers}")
    expected = cfg.speculators_kit.target_fingerprint
    if expected is not None:
        actual = target_fingerprint(target_dir)
        if actual != expected:
            raise SpecKitError(
                f"{source} was made for target fingerprint {expected}, but {target_dir} has "
                f"{actual} (different architecture config or tokenizer); use the matching target "
                "or re-train/convert the draft for this one"
            )


def save_draft(head: DraftHead, out_dir: str | os.PathLike, target_dir=None, overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise SpecKitError(f"{out_dir} already exists; pass --overwrite or choose another output")
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    if target_dir is not None:
        # EAGLE-3 keeps its lm_head even when it is the target's: vLLM loads it from the draft.
        shared_names = [n for n in SHARED if not (n == "lm_head.weight" and head.config.arch == "eagle3")]
        for name in shared_names:
            shared = shared_target_weight(target_dir, name) if name in state else None
            if shared is not None and shared.shape == state[name].shape and torch.equal(
                shared.to(state[name].dtype), state[name]
            ):
                del state[name]  # vLLM and our loader take it from the target
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_draft(head, state, tmp, out_dir)
    except Exception as err:  # safetensors says a full disk its own way, not as an OSError
        if (full := full_disk(out_dir.parent)) is None:
            raise
        raise DiskFull(f"writing the draft {out_dir} failed: {full}, then run the same command "
                       f"again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_draft(head: DraftHead, state: dict, tmp: Path, out_dir: Path) -> None:
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(head.config.to_json_dict(), indent=2) + "\n")
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)  # mkdtemp's private mode would otherwise carry over to shared drafts
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_draft(draft_dir: str | os.PathLike, target_dir=None, dtype=torch.float32) -> DraftHead:
    """Build the head from config.json and load its weights; shared weights come from the
    target (required when the draft omits them). Checks the target when one is given."""
    draft_dir = Path(draft_dir)
    cfg = read_config(draft_dir)
    source = str(draft_dir)
    if target_dir is not None:
        check_against_target(cfg, target_dir, source)
    weights = draft_dir / WEIGHTS
    if not weights.is_file():
        raise SpecKitError(f"{weights} is missing: the draft has a config but no weights")
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise SpecKitError(f"{weights} is not a readable safetensors file: {err}") from err
    head = DraftHead(cfg)
    expected = set(head.state_dict())
    for name in SHARED:
        if name in expected and name not in state:
            if target_dir is None:
                raise SpecKitError(
                    f"{source} shares {name} with its target; pass the target to load it"
                )
            shared = shared_target_weight(target_dir, name)
            if shared is None:
                raise SpecKitError(f"{source} needs {name} from the target, but {target_dir} has none")
            state[name] = shared
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if unexpected or missing:
        raise SpecKitError(
            f"{weights} does not match its config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    head.load_state_dict(state, strict=True)
    return head.to(dtype).eval()
