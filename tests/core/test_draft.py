"""Draft heads: the training forward (with training-time-test masks) computes exactly what
token-by-token drafting with a KV cache computes, for every head variant."""

import pytest
import torch

from speculators_kit.core.build import draft_config_for_target, init_draft
from speculators_kit.core.config import MoESpec
from speculators_kit.core.draft import DraftCache

NORMS = {"norm_before_fc": True, "norm_before_residual": True, "norm_output": True}
VARIANTS = [
    ("llama", "eagle3", 1, None, None),
    ("llama", "eagle3", 2, None, None),
    ("llama", "eagle3", 2, None, NORMS),
    ("llama", "eagle3", 1, None, {"fc_norm": True, "norm_output": True}),
    ("qwen3", "eagle3", 1, None, None),
    ("llama", "eagle", 2, None, None),
    ("qwen3_moe", "eagle3", 1, MoESpec(num_experts=4, top_k=2), None),
]


def build(tiny_targets, kind, arch, layers, moe, vocab=None, norms=None):
    cfg = draft_config_for_target(tiny_targets[kind], arch, layers, draft_vocab_size=vocab, moe=moe,
                                  norms=norms)
    head = init_draft(cfg, tiny_targets[kind], "random", seed=1)
    with torch.no_grad():  # norms away from 1 so wiring mistakes show up
        for name, p in head.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return head.eval()


def chain(head, ids, feats, start, steps):
    """Teacher-forced chain drafting from position `start` with a KV cache: step j feeds the
    draft's own hidden output and token ids[start + j]. Returns logits per step [Vd]."""
    cache = DraftCache()
    logit_h, hidden = head.step(ids[:, : start + 1], head.fuse(feats[:, : start + 1]),
                                torch.arange(start + 1)[None], cache)
    out = [head.compute_logits(logit_h[0, -1])]
    for j in range(1, steps):
        logit_h, hidden = head.step(ids[:, start + j : start + j + 1], hidden[:, -1:],
                                    torch.tensor([[start + j]]), cache)
        out.append(head.compute_logits(logit_h[0, -1]))
    return out


@pytest.mark.parametrize("kind,arch,layers,moe,norms", VARIANTS)
def test_training_forward_matches_cached_drafting(tiny_targets, kind, arch, layers, moe, norms):
    head = build(tiny_targets, kind, arch, layers, moe, norms=norms)
    torch.manual_seed(0)
    seq, steps = 12, 3
    ids = torch.randint(0, head.config.layer.vocab_size, (1, seq))
    feats = torch.randn(1, seq, head.config.feature_size)
    with torch.no_grad():
        train_logits = head.forward_train(ids, feats, ttt_steps=steps)
        for start in (0, 4, seq - steps):
            drafted = chain(head, ids, feats, start, steps)
            for j in range(steps):
                torch.testing.assert_close(train_logits[j][0, start], drafted[j], atol=2e-5, rtol=1e-4)


def test_prefill_in_chunks_equals_one_pass(tiny_targets):
    head = build(tiny_targets, "llama", "eagle3", 2, None)
    ids = torch.randint(0, 256, (1, 10))
    feats = head.fuse(torch.randn(1, 10, head.config.feature_size))
    with torch.no_grad():
        whole, _ = head.step(ids, feats, torch.arange(10)[None], DraftCache())
        cache = DraftCache()
        a, _ = head.step(ids[:, :6], feats[:, :6], torch.arange(6)[None], cache)
        b, _ = head.step(ids[:, 6:], feats[:, 6:], torch.arange(6, 10)[None], cache)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=1e-5)


def test_padding_mask_hides_keys(tiny_targets):
    head = build(tiny_targets, "llama", "eagle3", 1, None)
    ids = torch.randint(0, 256, (1, 8))
    feats = torch.randn(1, 8, head.config.feature_size)
    mask = torch.ones(1, 8)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        padded = head.forward_train(ids, feats, 2, attention_mask=mask)
        alone = head.forward_train(ids[:, 3:], feats[:, 3:], 2)
    # RoPE is relative, so dropping the padded prefix changes nothing for the real tokens
    # except at the end where step 1 reads a padded-out token.
    torch.testing.assert_close(padded[0][0, 3:], alone[0][0], atol=2e-5, rtol=1e-4)


def test_document_ids_keep_packed_samples_apart(tiny_targets):
    """Row 0 packs samples of 5 and 4 tokens plus 3 padding; row 1 is one 12-token sample.
    Each sample's logits equal those of the sample run alone, positions restarting at 0."""
    head = build(tiny_targets, "llama", "eagle3", 2, None)
    ids = torch.randint(0, 256, (2, 12))
    feats = torch.randn(2, 12, head.config.feature_size)
    doc = torch.tensor([[0] * 5 + [1] * 4 + [-1] * 3, [0] * 12])
    pos = torch.tensor([list(range(5)) + list(range(4)) + [0] * 3, list(range(12))])
    with torch.no_grad():
        packed = head.forward_train(ids, feats, 2, positions=pos, doc_ids=doc)
        for row, start, end in ((0, 0, 5), (0, 5, 9), (1, 0, 12)):
            alone = head.forward_train(ids[row:row + 1, start:end], feats[row:row + 1, start:end], 2)
            torch.testing.assert_close(packed[0][row, start:end], alone[0][0], atol=2e-5, rtol=1e-4)
            # step 1 at a sample's last position reads the next sample's token: never trained
            torch.testing.assert_close(packed[1][row, start:end - 1], alone[1][0, :-1], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(packed[1][0, 9:]).all()  # padding rows stay finite


@pytest.mark.parametrize("kind,arch,packed", [("qwen3", "eagle3", False), ("qwen3", "eagle3", True),
                                               ("llama", "eagle", True)])
def test_later_steps_on_chosen_rows_equal_the_full_unroll(tiny_targets, kind, arch, packed):
    """Steps > 0 run on the rows a caller reads (training skips prompt positions): there the
    outputs and the gradients are those of the full unroll; elsewhere zeros."""
    head = build(tiny_targets, kind, arch, 2, None)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    feats = torch.randn(2, 12, head.config.feature_size, generator=g)
    kw = {"attention_mask": torch.ones(2, 12)}
    if packed:
        kw = {"doc_ids": torch.tensor([[0] * 5 + [1] * 4 + [-1] * 3, [0] * 12]),
              "positions": torch.tensor([list(range(5)) + list(range(4)) + [0] * 3, list(range(12))])}
    step1 = torch.rand(2, 12, generator=g) < 0.6
    step2 = step1 & (torch.rand(2, 12, generator=g) < 0.6)
    full = head.forward_train(ids, feats, 3, **kw)
    some = head.forward_train(ids, feats, 3, rows=[None, step1, step2], **kw)
    torch.testing.assert_close(some[0], full[0])
    for j, keep in ((1, step1), (2, step2)):
        torch.testing.assert_close(some[j][keep], full[j][keep], atol=2e-5, rtol=1e-4)
        assert (some[j][~keep] == 0).all()
    grads = []
    for out in (full, some):
        head.zero_grad()
        sum(o[keep].square().sum() for o, keep in zip(out[1:], (step1, step2))).backward()
        grads.append(head.layers[0].mlp.down_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="subset"):  # a step's rows feed the next step's
        head.forward_train(ids, feats, 3, rows=[None, step2, step1], **kw)


def test_reduced_vocab_maps_back_to_target_ids(tiny_targets):
    head = build(tiny_targets, "llama", "eagle3", 1, None, vocab=32)
    with torch.no_grad():
        head.d2t.copy_(torch.arange(32) * 3)  # draft id i -> target id 4i
    logits = torch.randn(2, 32)
    full = head.to_target_vocab(logits)
    assert full.shape == (2, 256)
    assert torch.equal(full[:, torch.arange(32) * 4], logits)
    assert torch.isinf(full[:, 1]).all()


def test_moe_routes_to_top_k_experts(tiny_targets):
    head = build(tiny_targets, "qwen3_moe", "eagle3", 1, MoESpec(num_experts=4, top_k=1))
    mlp = head.layers[0].mlp
    x = torch.randn(5, head.config.layer.hidden_size)
    with torch.no_grad():
        chosen = mlp.gate(x).argmax(-1)
        expected = torch.stack([mlp.experts[int(e)](row) for e, row in zip(chosen, x)])
        torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
