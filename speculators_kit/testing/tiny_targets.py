"""Tiny random HF targets (dense Llama, Qwen3, Qwen3-MoE) with a real tokenizer.json,
saved as folders that every stage accepts in place of a real model. Seeded: the same call
builds the same weights."""

from __future__ import annotations

from pathlib import Path

KINDS = ("llama", "qwen3", "qwen3_moe")
COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 256, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
          "pad_token_id": 0}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _config(kind: str, vocab_size: int, hidden_size: int):
    from transformers import LlamaConfig, Qwen3Config, Qwen3MoeConfig

    kw = dict(COMMON, vocab_size=vocab_size, hidden_size=hidden_size, head_dim=32)  # vLLM CPU attention has no kernel for head_dim 16
    if kind == "llama":
        return LlamaConfig(**kw)
    if kind == "qwen3":
        return Qwen3Config(**kw)
    if kind == "qwen3_moe":
        return Qwen3MoeConfig(**kw, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                              decoder_sparse_step=1, mlp_only_layers=[])
    raise ValueError(f"unknown tiny target kind {kind!r}; known: {', '.join(KINDS)}")


def _tokenizer(vocab_size: int):
    """A byte-level-ish word tokenizer: special tokens, then single characters, then fillers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]
    # "\n" is in the chat template: were it unknown it would map to an id that HF `generate`
    # then treats as padding and masks out.
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    for i in range(len(vocab), vocab_size):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_target(out: str | Path, kind: str = "llama", seed: int = 0, vocab_size: int = 256,
                     hidden_size: int = 64) -> Path:
    """Build and save a tiny random target; returns its folder."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    torch.manual_seed(seed)
    config = _config(kind, vocab_size, hidden_size)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than HF's init: peaked, seed-specific distributions
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model.save_pretrained(out)
    _tokenizer(vocab_size).save_pretrained(out)
    return out
