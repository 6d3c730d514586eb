"""Verification math: a greedy table, seeded determinism, and convergence of speculative
sampling to the target distribution."""

import itertools

import pytest
import torch

from speculators_kit.core.sampling import SamplingParams, to_probs
from speculators_kit.core.verify import verify_greedy, verify_sampling


def one_hot_logits(rows, vocab=6):
    logits = torch.full((len(rows), vocab), -5.0)
    for i, tok in enumerate(rows):
        logits[i, tok] = 5.0
    return logits


@pytest.mark.parametrize(
    "draft, target_argmax, emitted, accepted",
    [
        ([1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4], 3),  # all accepted + bonus
        ([1, 2, 3], [1, 5, 3, 4], [1, 5], 1),  # first mismatch replaced by the target's token
        ([1, 2, 3], [0, 2, 3, 4], [0], 0),  # nothing accepted: one target token
        ([4], [4, 0], [4, 0], 1),
    ],
)
def test_greedy_table(draft, target_argmax, emitted, accepted):
    out, n = verify_greedy(torch.tensor(draft), one_hot_logits(target_argmax))
    assert (out, n) == (emitted, accepted)


def bigram_tables(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(vocab, vocab, generator=g) * 1.5, -1)
    draft = torch.softmax(torch.randn(vocab, vocab, generator=g) * 1.5, -1)
    return target, draft


def speculative_sequence(target, draft, first, k, length, generator):
    """Sample `length` tokens after `first` from bigram tables with chain drafting."""
    seq = [first]
    while len(seq) <= length:
        drafted, probs = [], []
        prev = seq[-1]
        for _ in range(k):
            p = draft[prev]
            tok = int(torch.multinomial(p, 1, generator=generator))
            drafted.append(tok)
            probs.append(p)
            prev = tok
        context = [seq[-1]] + drafted
        target_probs = torch.stack([target[c] for c in context])
        emitted, _ = verify_sampling(torch.tensor(drafted), torch.stack(probs), target_probs, generator)
        seq.extend(emitted)
    return tuple(seq[1 : length + 1])


def test_speculative_sampling_matches_target_distribution():
    vocab, k, length, draws = 4, 2, 3, 20000
    target, draft = bigram_tables(vocab, seed=3)
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(draws):
        seq = speculative_sequence(target, draft, 0, k, length, g)
        counts[seq] = counts.get(seq, 0) + 1
    tv = 0.0
    for seq in itertools.product(range(vocab), repeat=length):
        exact, prev = 1.0, 0
        for tok in seq:
            exact *= float(target[prev, tok])
            prev = tok
        tv += abs(counts.get(seq, 0) / draws - exact)
    tv /= 2
    # 64 outcomes, 20k draws: sampling noise alone gives TV ~0.02; a wrong residual gives > 0.1.
    assert tv < 0.035, tv


def test_wrong_residual_would_be_detected():
    """The bound above can fail: sampling the draft's token on rejection is visibly biased."""
    vocab, draws = 4, 20000
    target, draft = bigram_tables(vocab, seed=3)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab)
    for _ in range(draws):
        tok = int(torch.multinomial(draft[0], 1, generator=g))  # draft-only sampling
        counts[tok] += 1
    assert 0.5 * (counts / draws - target[0]).abs().sum() > 0.1


def test_seeded_sampling_is_deterministic():
    target, draft = bigram_tables(5, seed=1)
    runs = [speculative_sequence(target, draft, 0, 3, 12, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_top_k_top_p_transform():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    probs = to_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert probs[2] == 0 and probs[3] == 0 and torch.isclose(probs.sum(), torch.tensor(1.0))
    probs = to_probs(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert probs[0] == 1.0  # the top token alone holds > 50% of the mass
    assert to_probs(logits, SamplingParams()).tolist() == [1.0, 0.0, 0.0, 0.0]
