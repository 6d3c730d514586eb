"""Build the draft head a training run starts from: architecture from the `draft` section,
aux layers from the stores, draft vocabulary from the stores' token frequencies."""

from __future__ import annotations

from speculators_kit.core.build import draft_config_for_target, init_draft, target_config
from speculators_kit.core.config import MoESpec
from speculators_kit.core.errors import SpecKitError
from speculators_kit.core.format import shared_target_weight
from speculators_kit.core.vocab import apply_draft_vocab, select_draft_vocab
from speculators_kit.schema import eagle3_norms

ARCHS = {"eagle3": "eagle3", "eagle": "eagle", "hass": "hass"}


def build_head(cfg, target_dir, readers):
    d = cfg.draft
    tcfg = target_config(target_dir)
    vocab = tcfg["vocab_size"]
    size = d.draft_vocab_size
    if size is not None and size > vocab:
        raise SpecKitError(f"draft.draft_vocab_size {size} is larger than the target vocab {vocab}; "
                           f"use at most {vocab} (or leave it unset for the whole vocab)")
    if d.arch != "eagle3" and size not in (None, vocab):
        raise SpecKitError(f"draft.arch {d.arch} predicts with the target's own lm_head, so it has "
                           f"the whole vocab; remove draft.draft_vocab_size")
    if d.arch != "eagle3" and d.moe.experts:
        raise SpecKitError("MoE draft layers (draft.moe.experts > 0) need draft.arch eagle3")
    moe = MoESpec(num_experts=d.moe.experts, top_k=d.moe.top_k) if d.moe.experts else None
    aux = readers[0].manifest.aux_layer_ids if d.arch == "eagle3" else None
    if d.arch == "eagle3" and not aux:
        raise SpecKitError("the stores hold only the last layer; EAGLE-3 needs aux layers: "
                           "re-run datagen with capture.layers: auto")
    provenance = {"created_by": "speckit train", "init": d.init}
    norms = eagle3_norms(d) if d.arch == "eagle3" else None
    config = draft_config_for_target(target_dir, ARCHS[d.arch], d.num_layers, size, aux,
                                     d.num_speculative_tokens, moe, provenance, norms)
    head = init_draft(config, target_dir, d.init, cfg.data.seed)
    if size is not None and size < vocab:
        counts = sum(r.token_freq() for r in readers)
        specials = [tcfg.get("eos_token_id"), tcfg.get("bos_token_id")]
        specials = [i for s in specials for i in (s if isinstance(s, list) else [s])]
        ids = select_draft_vocab(counts, size, specials)
        apply_draft_vocab(head, ids, shared_target_weight(target_dir, "lm_head.weight"))
    return head



