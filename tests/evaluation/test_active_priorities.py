"""Active pair selection's priorities (evaluation.stats.active) on hand-computed values, and the
margin priority's symmetry in A and B."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.stats.active import (
    disagreement_priority,
    implicit_margin,
    margin_priority,
    pool_p_a,
    priority_from_margin,
)


def test_margin_and_its_priority_by_hand():
    # policy/reference log-probs of A: -10/-12 (ratio +2); of B: -9/-10 (ratio +1); beta 0.5
    assert implicit_margin([-10.0], [-12.0], [-9.0], [-10.0], 0.5)[0] == pytest.approx(0.5)
    # 2 / (1 + e^0.5)
    assert margin_priority([-10.0], [-12.0], [-9.0], [-10.0], 0.5)[0] == pytest.approx(2 / (1 + math.exp(0.5)))
    # the model cannot tell A from B: priority 1; it says 3 : 1 (|m| = ln 3): priority 1/2
    assert priority_from_margin([0.0, math.log(3), -math.log(3)]).tolist() == pytest.approx([1.0, 0.5, 0.5])
    # the smaller the margin, the higher the priority; a huge margin does not overflow
    p = priority_from_margin([0.1, 1.0, 5.0, 1e6])
    assert p[0] > p[1] > p[2] > p[3] >= 0.0


def test_margin_needs_a_positive_beta_and_finite_numbers():
    with pytest.raises(ValueError, match="beta"):
        implicit_margin([0.0], [0.0], [0.0], [0.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        priority_from_margin([float("nan")])


logp = st.floats(min_value=-500.0, max_value=0.0, allow_nan=False)


@given(logp, logp, logp, logp, st.floats(min_value=0.01, max_value=5.0))
def test_margin_priority_does_not_depend_on_which_response_is_a(pa, ra, pb, rb, beta):
    ab = margin_priority([pa], [ra], [pb], [rb], beta)[0]
    ba = margin_priority([pb], [rb], [pa], [ra], beta)[0]
    assert ab == pytest.approx(ba, rel=1e-12, abs=1e-300)
    assert 0.0 <= ab <= 1.0


def test_pool_p_a_shrinks_towards_one_half():
    # comparison 0: pool 0 votes A, A, tie; pool 1 votes B. prior 2 (one pseudo-vote each way).
    p, n = pool_p_a([0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 2, 1], n_items=1, n_pools=2)
    assert n.tolist() == [[3.0, 1.0]]
    assert p[0].tolist() == pytest.approx([(2 + 0.5 + 1) / (3 + 2), (0 + 1) / (1 + 2)])  # 0.7, 1/3


def test_disagreement_by_hand_and_the_neutral_value():
    # 0: pools disagree (0.7 vs 1/3); 1: they agree (A, A | A): 2/3 vs 3/4... ;
    # 2: one pool only (not measurable); 3: no votes at all
    item = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    pool = [0, 0, 0, 1, 0, 1, 1, 0, 0]
    label = [0, 0, 2, 1, 0, 0, 0, 0, 1]
    d = disagreement_priority(item, pool, label, n_items=4, n_pools=2)
    spread0 = 3.5 / 5 - 1 / 3
    spread1 = 3 / 4 - 2 / 3  # pool 1: (2 + 1) / (2 + 2); pool 0: (1 + 1) / (1 + 2)
    assert d[0] == pytest.approx(spread0)
    assert d[1] == pytest.approx(spread1)
    neutral = (spread0 + spread1) / 2  # the median of the measured ones
    assert d[2] == pytest.approx(neutral) and d[3] == pytest.approx(neutral)
    # so: clear disagreement first, then unmeasured, then agreement
    assert d[0] > d[2] == d[3] > d[1]
    # an explicit neutral value
    assert disagreement_priority(item, pool, label, 4, 2, neutral=0.0)[2:].tolist() == [0.0, 0.0]


def test_disagreement_with_no_votes_or_one_pool():
    assert disagreement_priority([], [], [], n_items=3, n_pools=2).tolist() == [0.0, 0.0, 0.0]
    assert disagreement_priority([0, 1], [0, 0], [0, 1], n_items=2, n_pools=1).tolist() == [0.0, 0.0]
    assert disagreement_priority([], [], [], n_items=0, n_pools=0).shape == (0,)


def test_disagreement_rejects_bad_indices():
    with pytest.raises(ValueError):
        disagreement_priority([0, 5], [0, 1], [0, 1], n_items=2, n_pools=2)
    with pytest.raises(ValueError):
        disagreement_priority([0], [0], [3], n_items=1, n_pools=1)


def test_disagreement_is_larger_the_more_votes_back_it():
    # one vote each way vs three votes each way: the same raw split, more evidence
    few = disagreement_priority([0, 0], [0, 1], [0, 1], 1, 2)[0]
    many = disagreement_priority([0] * 6, [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], 1, 2)[0]
    assert few == pytest.approx(2 / 3 - 1 / 3)
    assert many == pytest.approx(4 / 5 - 1 / 5)
    assert many > few
    assert np.all(disagreement_priority([0] * 6, [0, 0, 0, 1, 1, 1], [0] * 6, 1, 2) == 0.0)


def test_stable_uniform_is_fixed_by_seed_and_id_whatever_the_chunks():
    from evaluation.stats.active import stable_uniform

    ids = np.arange(1, 2001)
    u = stable_uniform(7, ids)
    assert ((u > 0) & (u < 1)).all()
    assert np.array_equal(u, np.concatenate([stable_uniform(7, ids[:500]), stable_uniform(7, ids[500:])]))
    assert not np.array_equal(u, stable_uniform(8, ids))
    # close to uniform: each decile holds about a tenth
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 150 and counts.max() < 250


def test_sampled_priority_by_hand_and_its_limits():
    from evaluation.stats.active import sampled_priority

    # key = u^(1 / w^p): u 0.25, w 0.5, p 1 -> 0.25^2; p 2 -> 0.25^4; w 1 -> u; w 0 -> 0
    assert sampled_priority([0.5], [0.25], 1.0)[0] == pytest.approx(0.0625)
    assert sampled_priority([0.5], [0.25], 2.0)[0] == pytest.approx(0.25 ** 4)
    assert sampled_priority([1.0, 0.0], [0.3, 0.3], 1.0).tolist() == pytest.approx([0.3, 0.0])
    # power 0: the key is u itself (a uniformly random order among scored comparisons)
    assert sampled_priority([0.9, 0.1], [0.2, 0.7], 0.0).tolist() == pytest.approx([0.2, 0.7])
    with pytest.raises(ValueError, match="power"):
        sampled_priority([0.5], [0.5], -1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sampled_priority([1.5], [0.5], 1.0)
    with pytest.raises(ValueError, match="u must"):
        sampled_priority([0.5], [1.0], 1.0)


def test_the_first_served_by_sampled_priority_is_drawn_in_proportion_to_priority_to_the_power():
    from evaluation.stats.active import sampled_priority, stable_uniform

    w = np.array([1.0, 0.5, 0.25, 0.0])
    for power, expected in ((1.0, np.array([4, 2, 1, 0]) / 7), (2.0, np.array([16, 4, 1, 0]) / 21)):
        first = np.zeros(4)
        for seed in range(6000):
            first[np.argmax(sampled_priority(w, stable_uniform(seed, np.arange(4)), power))] += 1
        assert first / first.sum() == pytest.approx(expected, abs=0.02)


# ----------------------------------------------------------------------------- expected information


def test_fisher_weight_by_hand():
    from evaluation.stats.active import fisher_weight

    # σ(m)σ(−m): 1/4 at 0; at m = ln 3, σ = 3/4 and 1/4 -> 3/16; symmetric in the sign
    assert fisher_weight([0.0, math.log(3), -math.log(3)]).tolist() == pytest.approx([0.25, 3 / 16, 3 / 16])
    assert fisher_weight([800.0])[0] == pytest.approx(0.0, abs=1e-300)
    with pytest.raises(ValueError, match="finite"):
        fisher_weight([float("nan")])


def _step_gains(x, w, xj, wj, ridge, order):
    """For each step of ``order``: the gain ½·log(1 + w·xᵀΛ⁻¹x) of the pair it takes and the best
    gain any pair left had, with an explicit inverse of the precision at every step."""
    x, w = np.asarray(x, float), np.asarray(w, float)
    norms = (x * x).sum(1)
    lam = ridge * 0.25 * (norms[norms > 0].mean() if (norms > 0).any() else 1.0)
    xj = np.asarray(xj, float).reshape(-1, x.shape[1])
    precision = lam * np.eye(x.shape[1]) + (xj * np.asarray(wj, float)[:, None]).T @ xj
    left, steps = set(range(len(x))), []
    for i in order:
        cov = np.linalg.inv(precision)
        gains = {j: 0.5 * math.log1p(w[j] * x[j] @ cov @ x[j]) for j in left}
        steps.append((gains[i], max(gains.values())))
        left.remove(i)
        precision = precision + w[i] * np.outer(x[i], x[i])
    return steps


def test_information_by_hand_covers_a_new_direction_before_a_near_duplicate():
    from evaluation.stats.active import information_priority

    # Three pairs, no votes yet, the model equally unsure of all: the longest feature first; then
    # the pair in the other direction, although the near-duplicate of the first is longer.
    x = np.array([[2.0, 0.0], [1.9, 0.1], [0.0, 1.0], [0.0, 0.0]])
    w = np.array([0.25, 0.25, 0.25, 0.25])
    p = information_priority(x, w, ridge=0.1)
    assert list(np.argsort(-p)[:3]) == [0, 2, 1]
    assert p[3] == 0.0  # a pair that could not be scored
    assert p[0] == 1.0 and (p[:3] > 0.5).all()  # all three greedy: (1/2, 1] by rank
    # A model already sure of pair 2 (its margin large) gives its vote little weight: it goes last.
    w_sure = np.array([0.25, 0.25, 0.001, 0.25])
    assert list(np.argsort(-information_priority(x, w_sure, ridge=0.1))[:3]) == [0, 1, 2]
    # Votes already cast along the first direction: the second direction comes first.
    p = information_priority(x, w, x_judged=[[1.0, 0.0]] * 20, w_judged=[0.25] * 20, ridge=0.1)
    assert np.argmax(p) == 2
    # Only the first `greedy` pairs are ordered greedily; the rest by their own gain, below 1/2.
    p = information_priority(x, w, ridge=0.1, greedy=1)
    assert p[0] == 1.0 and 0 < p[1] < 0.5 and 0 < p[2] < 0.5


def test_information_rejects_bad_input():
    from evaluation.stats.active import information_priority

    with pytest.raises(ValueError, match=r"\[n, d\]"):
        information_priority([1.0, 2.0], [0.25, 0.25])
    with pytest.raises(ValueError, match="one finite weight"):
        information_priority([[1.0]], [-1.0])
    with pytest.raises(ValueError, match="ridge"):
        information_priority([[1.0]], [0.25], ridge=0.0)
    with pytest.raises(ValueError, match="w_judged"):
        information_priority([[1.0]], [0.25], x_judged=[[1.0]], w_judged=[0.1, 0.2])
    assert information_priority(np.zeros((0, 3)), np.zeros(0)).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_information_order_is_the_greedy_order_and_keeps_its_meaning_under_swaps(data):
    """Against a brute-force greedy with explicit inverses; swapping A and B of any pairs (x -> −x,
    the same Fisher weight) or listing the pairs in another order changes no priority."""
    from evaluation.stats.active import information_priority

    n = data.draw(st.integers(1, 7))
    d = data.draw(st.integers(1, 4))
    floats = st.floats(-3, 3, allow_nan=False).map(lambda v: round(v, 1))
    x = np.array(data.draw(st.lists(st.lists(floats, min_size=d, max_size=d), min_size=n, max_size=n)))
    w = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.05, 0.2, 0.25]), min_size=n, max_size=n)))
    k = data.draw(st.integers(0, 3))
    xj = np.array(data.draw(st.lists(st.lists(floats, min_size=d, max_size=d), min_size=k, max_size=k))).reshape(k, d)
    wj = np.full(k, 0.25)
    p = information_priority(x, w, xj, wj, ridge=0.5, greedy=n)
    scorable = ((x * x).sum(1) > 0) & (w > 0)
    assert (p[~scorable] == 0).all() and (p[scorable] > 0.5).all()
    order = [int(i) for i in np.argsort(-p, kind="stable")[: int(scorable.sum())]]
    steps = _step_gains(x, w, xj, wj, 0.5, order)
    for taken, best in steps:  # each step takes a pair of the largest gain given the ones before
        assert taken == pytest.approx(best, rel=1e-6, abs=1e-9)
    signs = np.array(data.draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=n, max_size=n)))
    swapped = information_priority(x * signs[:, None], w, xj, wj, ridge=0.5, greedy=n)
    assert swapped == pytest.approx(p, abs=1e-9)
    # listing the pairs in another order: the same gains step by step (equal gains may swap places)
    perm = np.array(data.draw(st.permutations(range(n))))
    q = information_priority(x[perm], w[perm], xj, wj, ridge=0.5, greedy=n)
    order_q = [int(i) for i in np.argsort(-q, kind="stable")[: int(scorable.sum())]]
    steps_q = _step_gains(x[perm], w[perm], xj, wj, 0.5, order_q)
    assert [t for t, _ in steps_q] == pytest.approx([t for t, _ in steps], rel=1e-6, abs=1e-9)
