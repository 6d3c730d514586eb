"""Early exit and token budgets: which prefix of each draft is proposed, and when the drafting
loop may stop, checked against a brute-force reference on random confidences."""

import itertools
import math

import pytest
import torch

from speculators_kit.core.draft_budget import draft_lengths, drafting_done

NAN = float("nan")


def reference_lengths(conf, thresholds, token_budget, request_budget):
    """Enumerate every prefix choice; pick the one with the most tokens, then the highest summed
    score, among those within both budgets."""
    B, J = conf.shape
    caps = []
    for i in range(B):
        n = 0
        while n < J and (math.isnan(thresholds[i]) or conf[i, n] >= thresholds[i]):
            n += 1
        caps.append(min(n, request_budget or J))
    best, best_key = None, None
    for lengths in itertools.product(*[range(c + 1) for c in caps]):
        total = sum(lengths)
        if token_budget is not None and total > token_budget:
            continue
        score = sum(float(conf[i, :n].double().cumprod(0).sum()) for i, n in enumerate(lengths) if n)
        key = (total, score)
        if best_key is None or key > best_key:
            best, best_key = lengths, key
    return list(best)


@pytest.mark.parametrize("seed", range(40))
def test_lengths_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, J = 3, 4
    conf = torch.rand(B, J, generator=g)
    thresholds = torch.tensor([0.2, NAN, 0.5]) if seed % 2 else torch.full((B,), NAN)
    token_budget = [None, 1, 3, 5][seed % 4]
    request_budget = [None, 2][seed % 3 == 0]
    got = draft_lengths(conf, thresholds, token_budget, request_budget).tolist()
    assert got == reference_lengths(conf, thresholds.tolist(), token_budget, request_budget)
    assert token_budget is None or sum(got) <= token_budget


def test_early_exit_drops_the_unsure_token_and_everything_after():
    conf = torch.tensor([[0.9, 0.3, 0.95], [0.1, 0.9, 0.9], [0.8, 0.8, 0.8]])
    lengths = draft_lengths(conf, torch.tensor([0.5, 0.5, NAN]), None, None)
    assert lengths.tolist() == [1, 0, 3]


def test_budget_goes_to_the_most_confident_requests_first():
    conf = torch.tensor([[0.99, 0.99, 0.99], [0.5, 0.5, 0.5]])
    assert draft_lengths(conf, torch.full((2,), NAN), 4, None).tolist() == [3, 1]
    assert draft_lengths(conf, torch.full((2,), NAN), 4, 2).tolist() == [2, 2]


def test_ties_keep_every_draft_a_prefix():
    conf = torch.ones(2, 3)
    assert draft_lengths(conf, torch.full((2,), NAN), 3, None).tolist() == [2, 1]


def test_drafting_stops_only_when_no_later_token_could_be_proposed():
    nan2 = torch.full((2,), NAN)
    # Both requests exited: stop.
    assert drafting_done(torch.tensor([[0.1], [0.2]]), torch.tensor([0.5, 0.5]), None, None, 5)
    # One still sure: go on.
    assert not drafting_done(torch.tensor([[0.1], [0.9]]), torch.tensor([0.5, 0.5]), None, None, 5)
    # Budget of 2 filled by tokens a later step cannot beat (later scores <= 0.6 * p).
    assert drafting_done(torch.tensor([[0.6], [0.6]]), nan2, 2, None, 5)
    # A second token of request 0 (score up to 0.9) could still displace request 1's 0.6.
    assert not drafting_done(torch.tensor([[0.9], [0.6]]), nan2, 2, None, 5)
    # Request budget reached, or all steps drafted.
    assert drafting_done(torch.tensor([[0.9, 0.9], [0.9, 0.9]]), nan2, None, 2, 5)
    assert drafting_done(torch.rand(2, 5), nan2, None, None, 5)


@pytest.mark.parametrize("seed", range(20))
def test_stopping_early_never_changes_the_proposal(seed):
    """Whenever drafting_done says stop after step j, the lengths from the first j steps equal
    the lengths the full k steps would have given."""
    g = torch.Generator().manual_seed(100 + seed)
    B, J = 4, 5
    conf = torch.rand(B, J, generator=g) ** 0.3
    thresholds = torch.full((B,), 0.6) if seed % 2 else torch.full((B,), NAN)
    budget = [None, 3, 6][seed % 3]
    full = draft_lengths(conf, thresholds, budget, None)
    for steps in range(1, J + 1):
        if drafting_done(conf[:, :steps], thresholds, budget, None, J):
            assert torch.equal(draft_lengths(conf[:, :steps], thresholds, budget, None), full)
            break
