"""The TTT objective against a naive reference built from the tiny target's own HF modules."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from speculators_kit.core.build import draft_config_for_target, init_draft
from speculators_kit.core.vocab import apply_draft_vocab, select_draft_vocab
from speculators_kit.schema import LossSection
from speculators_kit.train.acceptance import chain_stats, tau_from_stats, walk_stats
from speculators_kit.train.objective import DraftTrainModule


def batch_for(target_dir, lengths, answer_from, layer_ids, seed=0):
    """Hidden states from the real tiny target (HF), padded like the collate function does."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    out = {"token_ids": torch.zeros(len(lengths), T, dtype=torch.long),
           "hidden": torch.zeros(len(lengths), T, len(layer_ids), 64),
           "dist_mask": torch.zeros(len(lengths), T, dtype=torch.bool),
           "valid": torch.zeros(len(lengths), T, dtype=torch.bool)}
    captured = {}
    model.model.norm.register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
    for b, n in enumerate(lengths):
        ids = torch.randint(8, 256, (n,), generator=g)
        with torch.no_grad():
            hs = model(input_ids=ids[None], output_hidden_states=True).hidden_states
        layers = [hs[k][0] for k in layer_ids[:-1]] + [captured["x"][0]]
        out["token_ids"][b, :n] = ids
        out["hidden"][b, :n] = torch.stack(layers, 1)
        out["dist_mask"][b, answer_from - 1: n] = True
        out["valid"][b, :n] = True
    return out, model


def naive_loss(module, model, batch, kind, steps, weights, draft_ids, all_tokens=False, align=0):
    """Loop over positions: step-j logits at t vs the target distribution of position t+1+j.
    align k: step j at t counts only if each step i < j that trained at t had x[t+2+i] in its
    top k (the mean still over every position)."""
    ids = batch["token_ids"]
    outputs = module.head.forward_train(ids[:, 1:], batch["hidden"][..., :-1, :].flatten(-2)[:, :-1],
                                        steps, attention_mask=batch["valid"][:, 1:])
    in_top = {}  # (i, b, t): step i's draft had the token fed to step i+1 among its top `align`
    total = 0.0
    for j, logits in enumerate(outputs):
        num, den = 0.0, 0
        for b in range(logits.shape[0]):
            for t in range(logits.shape[1]):
                p = t + 1 + j
                in_top[j, b, t] = True  # a row step j does not train counts as kept
                if p >= ids.shape[1] or not batch["valid"][b, p]:
                    continue
                if not (all_tokens or batch["dist_mask"][b, p]):
                    continue
                if p + 1 < ids.shape[1] and align:
                    top = logits[b, t].topk(align).indices.tolist()
                    in_top[j, b, t] = ids[b, p + 1].item() in [draft_ids[d].item() for d in top]
                if align and not all(in_top[i, b, t] for i in range(j)):
                    den += 1
                    continue
                full = model.lm_head(model.model.norm(batch["hidden"][b, p, -1]))
                target = F.softmax(full[draft_ids], -1)
                draft = F.softmax(logits[b, t], -1)
                if kind == "kl":
                    num += (target * (target.log() - draft.log())).sum()
                elif kind == "ce":
                    num += -draft[target.argmax()].log()
                else:
                    num += 0.5 * (target - draft).abs().sum()
                den += 1
        total += weights[j] * num / den
    return total / sum(weights)


@torch.no_grad()
def naive_stats(module, model, batch, steps, draft_ids):
    """Greedy matches at every position against the full-vocabulary target, then chain counts."""
    ids, valid, answer = batch["token_ids"], batch["valid"], batch["dist_mask"]
    outputs = module.head.forward_train(ids[:, 1:], batch["hidden"][..., :-1, :].flatten(-2)[:, :-1], steps,
                                        attention_mask=valid[:, 1:])
    target = model.lm_head(model.model.norm(batch["hidden"][..., -1, :]))[..., draft_ids]
    matches, masks = [], []
    for j, logits in enumerate(outputs):
        n = ids.shape[1] - 1 - j
        matches.append(logits[:, :n].argmax(-1) == target[:, 1 + j: 1 + j + n].argmax(-1))
        masks.append(valid[:, 1 + j: 1 + j + n] & answer[:, 1 + j: 1 + j + n])
    scored = [m & mask for m, mask in zip(matches, masks)]
    return torch.cat([chain_stats(matches, masks), walk_stats(scored, masks)])


@pytest.mark.parametrize("kind,tokens", [("kl", "answer"), ("ce", "answer"), ("tv", "answer"), ("kl", "all")])
def test_ttt_loss_matches_naive_reference(tiny_llama, kind, tokens):
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, 96, [1, 2], 3)
    head = init_draft(cfg, tiny_llama, "random", seed=1)
    counts = torch.arange(256).flip(0)  # any counts: the mapping is what matters
    draft_ids = select_draft_vocab(counts, 96, [2])
    apply_draft_vocab(head, draft_ids)
    loss_cfg = LossSection(kind=kind, ttt_steps=2, step_weights="decay", tokens=tokens)
    module = DraftTrainModule(head, Path(tiny_llama), loss_cfg)
    batch, model = batch_for(tiny_llama, [12, 9], answer_from=4, layer_ids=[1, 2, 4])
    loss, stats = module(batch)
    assert stats is None  # training computes no acceptance statistics
    with torch.no_grad():
        answers = naive_loss(module, model, batch, kind, 2, [1.0, 0.8], draft_ids)
    expected = naive_loss(module, model, batch, kind, 2, [1.0, 0.8], draft_ids, tokens == "all")
    assert torch.allclose(loss, expected.float(), rtol=1e-4, atol=1e-6), (loss, expected)
    # The same gradients as autograd through the reference (the KL has its own backward).
    expected.backward()
    reference_grad = head.fc.weight.grad.clone()
    head.zero_grad()
    loss.backward()  # and the loss trains the head, not the frozen embedding and lm_head
    assert torch.allclose(head.fc.weight.grad, reference_grad, rtol=1e-3, atol=1e-7)
    assert head.embed_tokens.weight.grad is None and head.lm_head.weight.grad is None
    module.eval()  # evaluation scores the answers only, and counts accepted chains
    eval_loss, stats = module(batch)
    assert torch.allclose(eval_loss, answers.float(), rtol=1e-4, atol=1e-6)
    if tokens == "all":  # the prompts count in training
        assert not torch.allclose(expected, answers, rtol=1e-3)
    assert stats[3] == batch["dist_mask"][:, 1:].sum()  # every trained step-0 position counted
    assert torch.equal(stats, naive_stats(module, model, batch, 2, draft_ids))
    # Held-out chains as long as serving drafts: more steps in the stats, the same loss.
    longer_loss, longer = module(batch, chain=4)
    assert torch.allclose(longer_loss, eval_loss) and len(longer) == 2 * 4 + 3 and longer[5] == stats[3]
    assert longer[0] < stats[0]  # fewer positions have all 4 steps inside the sequence
    assert longer[6] == stats[4]  # the walk's chains start where they did: after each answer's first token


@pytest.mark.parametrize("align", [1, 24])
def test_align_trains_only_the_chains_the_draft_kept(tiny_llama, align):
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, 96, [1, 2], 3)
    head = init_draft(cfg, tiny_llama, "random", seed=1)
    draft_ids = select_draft_vocab(torch.arange(256).flip(0), 96, [2])
    apply_draft_vocab(head, draft_ids)
    batch, model = batch_for(tiny_llama, [14, 11], answer_from=4, layer_ids=[1, 2, 4])
    # a cycle of 4 draft-vocab tokens: the random draft's top k holds the next one at some positions
    # only, so some chains are kept and some dropped (at k=1: 6 of 24 at step 1, 3 of 22 at step 2)
    for b, n in enumerate([14, 11]):
        batch["token_ids"][b, 2:n] = draft_ids[torch.arange(2, n) % 4]
    modules = [DraftTrainModule(head, Path(tiny_llama), LossSection(ttt_steps=3, align=a)) for a in (0, align)]
    plain, aligned = (m(batch)[0] for m in modules)
    with torch.no_grad():
        expected = naive_loss(modules[1], model, batch, "kl", 3, [1.0] * 3, draft_ids, align=align)
        everything = naive_loss(modules[0], model, batch, "kl", 3, [1.0] * 3, draft_ids)
    assert torch.allclose(aligned, expected.float(), rtol=1e-4, atol=1e-6), (aligned, expected)
    assert torch.allclose(plain, everything.float(), rtol=1e-4, atol=1e-6)
    assert aligned < plain  # dropped chains: the masked rows count as zero loss
    for m in modules:
        m.eval()
    assert torch.equal(modules[0](batch)[0], modules[1](batch)[0])  # the held-out loss is unchanged


def naive_feature_error(head, model, batch, steps):
    """Per step, the mean over trained (answer) positions of |v - n|^2 / |n|^2: v the draft's
    vector for the lm_head at t, n the target's normed last layer at t + 1 + j."""
    ids, valid, answer = batch["token_ids"], batch["valid"], batch["dist_mask"]
    outputs = head.forward_train(ids[:, 1:], batch["hidden"][..., :-1, :].flatten(-2)[:, :-1], steps,
                                 attention_mask=valid[:, 1:], logits=False)
    normed = model.model.norm(batch["hidden"][..., -1, :])
    means = []
    for j, out in enumerate(outputs):
        errors = [(out[b, t] - normed[b, t + 1 + j]).pow(2).sum() / normed[b, t + 1 + j].pow(2).sum()
                  for b in range(ids.shape[0]) for t in range(ids.shape[1] - 1 - j)
                  if valid[b, t + 1 + j] and answer[b, t + 1 + j]]
        means.append(torch.stack(errors).mean())
    return means


def test_feature_weight_adds_the_error_against_the_targets_normed_last_layer(tiny_llama):
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, 96, [1, 2], 3)
    head = init_draft(cfg, tiny_llama, "random", seed=1)
    draft_ids = select_draft_vocab(torch.arange(256).flip(0), 96, [2])
    apply_draft_vocab(head, draft_ids)
    batch, model = batch_for(tiny_llama, [12, 9], answer_from=4, layer_ids=[1, 2, 4])
    modules = [DraftTrainModule(head, Path(tiny_llama), LossSection(ttt_steps=2, feature_weight=w))
               for w in (0.0, 0.5)]
    loss = modules[1](batch)[0]
    kl = naive_loss(modules[0], model, batch, "kl", 2, [1.0, 1.0], draft_ids)
    expected = kl + 0.5 * sum(naive_feature_error(head, model, batch, 2)) / 2  # uniform step weights
    assert torch.allclose(loss, expected.float(), rtol=1e-4), (loss, expected)
    assert not torch.allclose(loss, kl.float(), rtol=1e-2)
    expected.backward()  # and its gradients are autograd's through the reference
    reference_grad = head.fc.weight.grad.clone()
    head.zero_grad()
    loss.backward()
    assert torch.allclose(head.fc.weight.grad, reference_grad, rtol=1e-3, atol=1e-7)
    for m in modules:
        m.eval()
    assert torch.equal(modules[0](batch)[0], modules[1](batch)[0])  # the held-out loss is the KL alone


def test_tau_estimate_from_chain_counts():
    # three chains of k=3: accepted 0, 2 and 3 tokens; a fourth position is not a full chain
    match = [torch.tensor([[False, True, True, True]]), torch.tensor([[True, True, True, False]]),
             torch.tensor([[True, False, True, True]])]
    mask = [torch.tensor([[True, True, True, False]])] * 3
    stats = chain_stats(match, mask)
    assert stats.tolist() == [3, 2, 2, 1, 3]
    tau, per_pos = tau_from_stats(stats[:-1])
    assert tau == pytest.approx(1 + (0 + 2 + 3) / 3)
    assert per_pos == pytest.approx([2 / 3, 1.0, 0.5])


def test_decoding_walk_starts_chains_where_greedy_decoding_does():
    """Row 0 holds one answer (positions 1-6), row 1 two (0-1 and 3-4). Each answer's first
    token is the prefill's; a chain accepting a tokens moves the next start a + 1 on."""
    f, t = False, True
    scored = torch.tensor([[f, t, t, t, t, t, t, f], [t, t, f, t, t, f, f, f]])
    step0 = torch.tensor([[f, t, f, f, t, t, t, f], [t, t, f, t, t, f, f, f]])
    step1 = torch.tensor([[f, t, t, f, f, t, f], [t, f, f, t, f, f, f]])
    # row 0: starts 2 (0 accepted), 3 (0), 4 (1), 6 (1); row 1: starts 1 (1), 4 (1)
    walk = walk_stats([step0, step1], [scored, scored[:, :7]])
    assert walk.tolist() == [6, 4, 0]
    tau, per_pos = tau_from_stats(walk)
    assert tau == pytest.approx(1 + 4 / 6) and per_pos == pytest.approx([4 / 6, 0.0])
    # every position also counts each answer's first token and the positions the walk jumps
    # over: 10 chains, 8 accept step 0, 4 both steps
    every = chain_stats([step0, step1], [scored, scored[:, :7]])
    assert tau_from_stats(every[:-1])[0] == pytest.approx(1 + (8 + 4) / 10)


def test_lm_head_trains_only_when_asked(tiny_llama):
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, None, [1, 2], 3)
    loss_cfg = LossSection(kind="kl", ttt_steps=1, step_weights="uniform")
    frozen = DraftTrainModule(init_draft(cfg, tiny_llama, "random"), Path(tiny_llama), loss_cfg)
    trained = DraftTrainModule(init_draft(cfg, tiny_llama, "random"), Path(tiny_llama), loss_cfg, train_lm_head=True)
    assert not frozen.head.lm_head.weight.requires_grad and trained.head.lm_head.weight.requires_grad
    # a frozen lm_head is the target's, also for a randomly initialised head
    from speculators_kit.core.format import shared_target_weight
    assert torch.equal(frozen.head.lm_head.weight, shared_target_weight(tiny_llama, "lm_head.weight").float())


def reference_balance(gate: torch.nn.Linear, x: torch.Tensor, top_k: int) -> torch.Tensor:
    """E * sum_e (share of the top-k picks that went to e) * (mean router probability of e)."""
    router = F.softmax(gate(x.reshape(-1, x.shape[-1])).float(), -1)
    picks = F.one_hot(router.topk(top_k, -1).indices, router.shape[-1]).float().sum(1)  # [N, E]
    return router.shape[-1] * (picks.mean(0) / top_k * router.mean(0)).sum()


def test_moe_balance_term_covers_every_ttt_step(tiny_llama):
    from speculators_kit.core.config import MoESpec
    from speculators_kit.core.layers import MoEMLP
    from speculators_kit.train.objective import MOE_BALANCE_WEIGHT

    cfg = draft_config_for_target(tiny_llama, "eagle3", 2, None, [1, 2], 3, moe=MoESpec(num_experts=4, top_k=2))
    module = DraftTrainModule(init_draft(cfg, tiny_llama, "random", seed=3), Path(tiny_llama),
                              LossSection(kind="kl", ttt_steps=3, step_weights="uniform"))
    moes = [m for m in module.head.modules() if isinstance(m, MoEMLP)]
    calls = []
    for m in moes:
        m.register_forward_hook(lambda mod, args, out: calls.append(reference_balance(mod.gate, args[0], mod.top_k)))
    batch, _ = batch_for(tiny_llama, [12, 9], answer_from=4, layer_ids=[1, 2, 4])
    loss = module(batch)[0]
    seen = torch.stack(calls)  # the training forward's
    assert len(moes) == 2 and len(seen) == 2 * 3  # both layers, at each of the 3 steps
    assert all(m.balance_terms == [] for m in moes)  # taken by this batch, not left for the next
    module.eval()  # the held-out loss is the distillation alone, and the same positions are scored
    with torch.no_grad():
        distill = module(batch)[0]
    expected = distill + MOE_BALANCE_WEIGHT * seen.mean()
    assert torch.allclose(loss, expected, rtol=1e-5), (loss, expected)
    assert not torch.allclose(loss, distill + MOE_BALANCE_WEIGHT * seen[-2:].mean(), rtol=1e-5)  # not the last step's
    assert all(m.balance_terms == [] for m in moes)  # evaluation keeps none
    loss.backward()  # and the router learns from it
    assert all(m.gate.weight.grad is not None and m.gate.weight.grad.abs().sum() > 0 for m in moes)


def test_feature_noise_perturbs_the_inputs_in_training_only(tiny_llama):
    """Each layer's features get U(-a, a) * their RMS; the targets stay the clean last layer's, and
    evaluation reads the clean features."""
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, None, [1, 2], 3)
    a = 0.3
    module = DraftTrainModule(init_draft(cfg, tiny_llama, "random", seed=2), Path(tiny_llama),
                              LossSection(kind="kl", ttt_steps=2, step_weights="uniform", feature_noise=a))
    inputs = []
    module.head.fc.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    batch, model = batch_for(tiny_llama, [12, 9], answer_from=4, layer_ids=[1, 2, 4])
    torch.manual_seed(0)
    loss = module(batch)[0]
    noisy = inputs[0].view(2, 11, 2, 64)
    clean = batch["hidden"][:, :-1, :-1, :]
    bound = a * clean.pow(2).mean(-1, keepdim=True).sqrt()
    diff = noisy - clean
    assert (diff.abs() <= bound * (1 + 1e-5)).all()
    assert (diff.abs() > 0.5 * bound).float().mean() > 0.3  # spread over the range, not a tiny jitter
    # the loss is the clean objective's on those noisy inputs: the targets did not move
    moved = dict(batch, hidden=batch["hidden"].clone())
    moved["hidden"][:, :-1, :-1, :] = noisy
    with torch.no_grad():
        expected = naive_loss(module, model, moved, "kl", 2, [1.0, 1.0], list(range(256)))
    assert torch.allclose(loss, expected.float(), rtol=1e-4, atol=1e-6), (loss, expected)
    module.eval()
    inputs.clear()
    module(batch)
    assert torch.equal(inputs[0].view(2, 11, 2, 64), clean)


def test_dropout_zeroes_layer_outputs_in_training_only(tiny_llama):
    """loss.dropout zeroes that share of the attention and MLP outputs (scaling the rest), in
    training only: evaluation gives the loss of the same head without dropout."""
    cfg = draft_config_for_target(tiny_llama, "eagle3", 1, None, [1, 2], 3)
    head = init_draft(cfg, tiny_llama, "random", seed=2)
    plain = DraftTrainModule(init_draft(cfg, tiny_llama, "random", seed=2), Path(tiny_llama),
                             LossSection(kind="kl", ttt_steps=2))
    module = DraftTrainModule(head, Path(tiny_llama), LossSection(kind="kl", ttt_steps=2, dropout=0.5))
    seen = []
    head.layers[0].mlp.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    batch, _ = batch_for(tiny_llama, [12, 9], answer_from=4, layer_ids=[1, 2, 4])
    torch.manual_seed(0)
    first = module(batch)[0]
    zeros = torch.cat([(s == 0).float().flatten() for s in seen]).mean()
    assert 0.4 < zeros < 0.6, zeros
    assert not torch.allclose(first, module(batch)[0])  # another mask each pass
    assert not torch.allclose(first, plain(batch)[0])
    module.eval(), plain.eval()
    seen.clear()
    assert torch.equal(module(batch)[0], plain(batch)[0])
    assert not any((s == 0).any() for s in seen)
