"""Active pair selection's priorities (evaluation.stats.active) on hand-computed values, and the
margin priority's symmetry in A and B."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
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
