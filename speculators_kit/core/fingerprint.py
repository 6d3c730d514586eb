"""Target fingerprint: a hash of the target's architecture config and tokenizer vocabulary.

A draft is only valid on the exact target it was trained for; two targets that share an
architecture but differ in vocabulary (or the reverse) must get different fingerprints.
Weights are deliberately not hashed: a re-quantized or re-saved target keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from speculators_kit.core.errors import SpecKitError

# Config keys that change what a draft sees (shapes, layer count, positions, vocab).
ARCH_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps",
    "rope_parameters", "rope_theta", "rope_scaling", "tie_word_embeddings",
    "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
)


def arch_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture-defining subset of an HF config.json dict."""
    text = config.get("text_config", config)  # multimodal wrappers nest the LM config
    return {k: text[k] for k in ARCH_KEYS if text.get(k) is not None}


def tokenizer_vocab(target_dir: Path) -> dict[str, int]:
    """token -> id from tokenizer.json (base vocab plus added tokens), without transformers."""
    path = Path(target_dir) / "tokenizer.json"
    if not path.is_file():
        raise SpecKitError(f"{path} is missing: the target folder needs a fast tokenizer file")
    data = json.loads(path.read_text())
    vocab = data.get("model", {}).get("vocab", {})
    if isinstance(vocab, list):  # unigram tokenizers store [piece, score] pairs
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    vocab = dict(vocab)
    for tok in data.get("added_tokens", []):
        vocab[tok["content"]] = tok["id"]
    return vocab


def fingerprint(config: dict[str, Any], vocab: dict[str, int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(arch_summary(config), sort_keys=True).encode())
    digest.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1])).encode())
    return "sha256:" + digest.hexdigest()[:32]


def target_fingerprint(target_dir: str | Path) -> str:
    target_dir = Path(target_dir)
    config_path = target_dir / "config.json"
    if not config_path.is_file():
        raise SpecKitError(f"{config_path} is missing: not an HF model folder")
    return fingerprint(json.loads(config_path.read_text()), tokenizer_vocab(target_dir))
