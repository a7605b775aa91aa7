"""Per-annotator bias and reliability estimates on hand-made cases."""

import numpy as np
import pytest

from evaluation.stats.aggregation import aggregate
from evaluation.stats.bias import (
    annotator_report,
    annotator_weights,
    gold_accuracy,
    group_median,
    length_bias,
    position_bias,
    propensities,
    speed,
    wilson_interval,
)
from evaluation.stats.judgments import TIE, A, B, Judgments

Z = 1.959963984540054  # 97.5% normal quantile


def J(rows, **kw):
    item, worker, label = np.array(rows).T
    return Judgments(item=item, worker=worker, label=label, **kw)


# --------------------------------------------------------------------------- gold


def test_gold_accuracy_beta_posterior():
    # Worker 0: 3 gold, all right -> Beta(2+3, 1+0) = Beta(5, 1): mean 5/6; its CDF is x^5, so
    #   the 2.5% / 97.5% quantiles are 0.025^(1/5) = 0.478176 and 0.975^(1/5) = 0.994949.
    # Worker 1: no gold -> the prior Beta(2, 1): mean 2/3, CDF x^2 -> sqrt(.025), sqrt(.975).
    # Worker 2: 1 of 2 gold right -> Beta(3, 2): mean 3/5. The non-gold item 3 never counts.
    rows = [(0, 0, A), (1, 0, B), (2, 0, TIE), (3, 1, A), (0, 2, A), (1, 2, A), (3, 2, B)]
    g = gold_accuracy(J(rows, gold=np.array([A, B, TIE, -1])))
    assert g.n_gold.tolist() == [3, 0, 2] and g.n_correct.tolist() == [3, 0, 1]
    np.testing.assert_allclose(g.mean, [5 / 6, 2 / 3, 3 / 5])
    np.testing.assert_allclose(g.low[:2], [0.025 ** (1 / 5), np.sqrt(0.025)])
    np.testing.assert_allclose(g.high[:2], [0.975 ** (1 / 5), np.sqrt(0.975)])


# --------------------------------------------------------------------------- position


def test_wilson_interval_by_hand():
    # p = 6/8, n = 8: denom = 1 + z^2/8 = 1.4801824, centre = (0.75 + z^2/16)/denom = 0.6688981,
    # half = z sqrt(.75*.25/8 + z^2/256)/denom = 0.2596227.
    low, high = wilson_interval(np.array([6]), np.array([8]))
    np.testing.assert_allclose([low[0], high[0]], [0.6688981 - 0.2596227, 0.6688981 + 0.2596227], atol=1e-7)
    # All successes: low = n / (n + z^2).
    low, high = wilson_interval(np.array([20]), np.array([20]))
    np.testing.assert_allclose([low[0], high[0]], [20 / (20 + Z * Z), 1.0])


def test_position_bias_by_hand():
    # Worker 0: 8 non-tie judgments, 6 of them pick the left response (+1 tie, ignored):
    #   bias = 6/8 - 1/2 = 0.25, Wilson interval - 1/2 = (-0.0907, 0.4285): includes 0.
    # Worker 1: 20 of 20 picks on the left: bias 0.5, low = 20/(20 + z^2) - 1/2 = 0.3389 > 0.
    rows, a_left = [], []
    labels0 = [A, A, A, B, B, B, A, B]
    left0 = [True, True, True, False, False, False, False, True]  # picks: L L L L L L R R
    for i, (lab, al) in enumerate(zip(labels0, left0, strict=True)):
        rows.append((i, 0, lab))
        a_left.append(al)
    rows.append((8, 0, TIE))
    a_left.append(True)
    for i in range(20):
        al = i % 2 == 0
        rows.append((i, 1, A if al else B))
        a_left.append(al)
    p = position_bias(J(rows, a_left=np.array(a_left)))
    assert p.n.tolist() == [8, 20] and p.n_left.tolist() == [6, 20]
    np.testing.assert_allclose(p.bias, [0.25, 0.5])
    np.testing.assert_allclose(p.low, [-0.0907246, 20 / (20 + Z * Z) - 0.5], atol=1e-6)
    np.testing.assert_allclose(p.high[0], 0.4285208, atol=1e-6)
    assert p.significant.tolist() == [False, True]


def test_position_bias_relative_to_consensus():
    # One worker, two items, picks left both times. The consensus says P(A) = 0.9 on item 0
    # (A shown left) and P(A) = 0.2 on item 1 (A shown right, so P(left better) = 0.8):
    #   diffs 1 - 0.9 = 0.1 and 1 - 0.8 = 0.2 -> relative bias 0.15.
    # Sample sd of (0.1, 0.2) = 0.0707107 -> se = 0.05.
    j = J([(0, 0, A), (1, 0, B)], a_left=np.array([True, False]))
    consensus = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    p = position_bias(j, consensus)
    np.testing.assert_allclose(p.relative, [0.15])
    np.testing.assert_allclose(p.relative_se, [0.05])


def test_position_bias_counts_known_display_orders_only():
    # Worker 0: 20 imported votes, all for A, display order never recorded: nothing to measure
    #   (n = 0, bias n/a) -- not "20 of 20 on the left", which A-on-the-left-by-default would say.
    # Worker 1: the by-hand worker 1 of test_position_bias_by_hand (20 of 20 left, known order)
    #   plus 10 unknown-order votes for B, which must not change anything: bias 0.5.
    # Worker 2: 6 known (3 left: bias 0) and 6 unknown (all A).
    rows, a_left, known = [], [], []
    for i in range(20):
        rows.append((i, 0, A))
        a_left.append(True)  # what the old default stored; ignored where unknown
        known.append(False)
    for i in range(20):
        al = i % 2 == 0
        rows.append((i, 1, A if al else B))
        a_left.append(al)
        known.append(True)
    for i in range(20, 30):
        rows.append((i, 1, B))
        a_left.append(False)
        known.append(False)
    for i in range(6):
        al = i % 2 == 0
        rows.append((i, 2, A))  # picks left on the A-left half, right on the other
        a_left.append(al)
        known.append(True)
    for i in range(6, 12):
        rows.append((i, 2, A))
        a_left.append(True)
        known.append(False)
    j = J(rows, a_left=np.array(a_left), a_left_known=np.array(known))
    p = position_bias(j)
    assert p.n.tolist() == [0, 20, 6] and p.n_left.tolist() == [0, 20, 3]
    assert np.isnan(p.bias[0]) and np.isnan(p.low[0]) and np.isnan(p.high[0]) and np.isnan(p.relative[0])
    assert not p.significant[0]
    np.testing.assert_allclose(p.bias[1:], [0.5, 0.0])
    np.testing.assert_allclose(p.low[1], 20 / (20 + Z * Z) - 0.5)
    assert p.significant.tolist() == [False, True, False]
    # The same numbers as on the known-order judgments alone (under the same consensus).
    only_known = position_bias(j.subset(np.array(known)), aggregate(j, "majority"))
    np.testing.assert_allclose(p.bias[1:], only_known.bias[1:])
    np.testing.assert_allclose(p.relative[1:], only_known.relative[1:])
    # No position factor without a known order; worker 1's demonstrated bias still costs weight.
    w = annotator_weights(j)
    np.testing.assert_allclose(w.position_factor, [1.0, 1 - 2 * (20 / (20 + Z * Z) - 0.5), 1.0])
    report = annotator_report(j)
    assert np.isnan(report["position_bias"][0]) and not report["position_flag"][0]
    assert report["position_flag"][1]


# --------------------------------------------------------------------------- length


def test_length_bias_by_hand():
    # 4 items with A longer; consensus P(A | not tie) = 0.5 each (item 4 has equal lengths and
    # item 5 a tie vote: both ignored). The worker picks the longer (A) 3 times of 4:
    #   diffs (.5, .5, .5, -.5): bias 0.25; sample variance ((.25)^2*3 + (.75)^2)/3 = 0.25,
    #   sd 0.5, se 0.5/2 = 0.25; interval 0.25 -/+ 1.96*0.25 includes 0.
    rows = [(0, 0, A), (1, 0, A), (2, 0, A), (3, 0, B), (4, 0, A), (5, 0, TIE)]
    len_a = np.array([200, 300, 400, 500, 100, 900.0])
    len_b = np.array([100, 100, 100, 100, 100, 100.0])
    consensus = np.tile([0.45, 0.45, 0.1], (6, 1))
    lb = length_bias(J(rows, len_a=len_a, len_b=len_b), consensus)
    assert lb.n.tolist() == [4]
    np.testing.assert_allclose(lb.rate_longer, [0.75])
    np.testing.assert_allclose(lb.consensus_rate_longer, [0.5])
    np.testing.assert_allclose(lb.bias, [0.25])
    np.testing.assert_allclose(lb.se, [0.25])
    np.testing.assert_allclose([lb.low[0], lb.high[0]], [0.25 - Z * 0.25, 0.25 + Z * 0.25])
    assert not lb.significant[0]


def test_length_bias_needs_lengths():
    with pytest.raises(ValueError, match="len_a"):
        length_bias(J([(0, 0, A)]))


# --------------------------------------------------------------------------- propensities, speed


def test_propensities_by_hand():
    # Worker 0: 2 ties in 5 (one of them "both bad"); worker 1: 0 of 3. Project: 2/8 ties, 1/8 both bad.
    rows = [(0, 0, TIE), (1, 0, TIE), (2, 0, A), (3, 0, B), (4, 0, A), (0, 1, A), (1, 1, B), (2, 1, A)]
    both_bad = np.array([True, False, False, False, False, False, False, False])
    p = propensities(J(rows, both_bad=both_bad))
    np.testing.assert_allclose(p.tie_rate, [0.4, 0.0])
    np.testing.assert_allclose(p.both_bad_rate, [0.2, 0.0])
    assert p.project_tie_rate == 0.25 and p.project_both_bad_rate == 0.125
    assert p.tie_low[0] < 0.4 < p.tie_high[0]


def test_group_median_matches_numpy():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 30, 1000)
    values = rng.exponential(10, 1000)
    n, med = group_median(group, values, 32)
    for g in range(30):
        assert med[g] == pytest.approx(np.median(values[group == g]))
    assert n[30] == 0 and np.isnan(med[31])


def test_speed_flags_by_hand():
    # Medians: w0 (10, 20, 30) -> 20; w1 (1, 2, 9, 2) -> 2 (< 3 s); w2 (20, 24, 28) -> 24;
    # w3 (4, 5, 6) -> 5: above 3 s but below 0.25 x crowd median... crowd median of
    # (20, 2, 24, 5) = 12.5 -> threshold 3.125: w3 not flagged; w4 has only 2 timed judgments.
    secs = {0: [10, 20, 30], 1: [1, 2, 9, 2], 2: [20, 24, 28], 3: [4, 5, 6], 4: [0.5, 0.5]}
    rows, seconds = [], []
    for w, ss in secs.items():
        for i, s in enumerate(ss):
            rows.append((i, w, A))
            seconds.append(s)
    s = speed(J(rows, seconds=np.array(seconds)))
    np.testing.assert_allclose(s.median_seconds, [20, 2, 24, 5, 0.5])
    assert s.crowd_median == 12.5
    assert s.too_fast.tolist() == [False, True, False, False, False]
    s = speed(J(rows, seconds=np.array(seconds)), min_seconds=1.0, relative=0.5)  # 0.5 * 12.5 = 6.25
    assert s.too_fast.tolist() == [False, True, False, True, False]


# --------------------------------------------------------------------------- weights


def test_annotator_weights_rule_by_hand():
    # No display order / lengths -> position and length factors are 1.
    # w0: 10 gold, all right: acc = 12/13, base = 2*12/13 - 1 = 11/13.
    # w1: no gold, DS accuracy 0.8 given: base = 0.6; manual down-weight 0.5 -> 0.3.
    # w2: no gold, no DS accuracy (NaN): prior 2/3 -> base 1/3.
    # w3: 10 gold, 5 right: acc = 7/13 -> base 1/13, excluded -> 0.
    # w4: 2 gold (< min_gold), DS accuracy 0.4: below chance -> base 0.
    rows = [(i, 0, A) for i in range(10)] + [(i, 3, A if i < 5 else B) for i in range(10)]
    rows += [(20, 1, A), (21, 2, A), (0, 4, A), (1, 4, A)]
    gold = np.full(22, -1)
    gold[:10] = A
    j = J(rows, gold=gold)
    ds = np.array([0.99, 0.8, np.nan, 0.99, 0.4])
    excluded = np.array([False, False, False, True, False])
    manual = np.array([1, 0.5, 1, 1, 1.0])
    w = annotator_weights(j, ds_accuracy=ds, excluded=excluded, manual=manual)
    np.testing.assert_allclose(w.accuracy, [12 / 13, 0.8, 2 / 3, 7 / 13, 0.4])
    assert w.accuracy_source.tolist() == ["gold", "dawid_skene", "prior", "gold", "dawid_skene"]
    np.testing.assert_allclose(w.base, [11 / 13, 0.6, 1 / 3, 1 / 13, 0.0])
    np.testing.assert_allclose(w.weight, [11 / 13, 0.3, 1 / 3, 0.0, 0.0])


def test_annotator_weights_position_and_speed_factors():
    # w0 always picks the left response on 20 items: Wilson low = 20/(20 + z^2) = 0.838875,
    # so the interval sits 0.338875 from 0 and the position factor is 1 - 2*0.338875 = 0.32225.
    # w1 alternates left/right: 10 of 20 left, interval contains 0 -> factor 1.
    # w1 is also fast (median 1 s): speed factor 1/2. Both are prior-only: base 1/3.
    rows, a_left, seconds = [], [], []
    for i in range(20):
        al = i % 2 == 0
        rows += [(i, 0, A if al else B), (i, 1, A)]
        a_left += [al, al]
        seconds += [30.0, 1.0]
    j = J(rows, a_left=np.array(a_left), seconds=np.array(seconds))
    w = annotator_weights(j)
    np.testing.assert_allclose(w.position_factor, [1 - 2 * (20 / (20 + Z * Z) - 0.5), 1.0])
    np.testing.assert_allclose(w.speed_factor, [1.0, 0.5])
    np.testing.assert_allclose(w.weight, [(1 / 3) * 0.3222503, (1 / 3) * 0.5], atol=1e-7)


def test_annotator_report_has_one_row_per_worker():
    rows = [(0, 0, A), (0, 1, B), (1, 0, A), (1, 1, A)]
    j = J(
        rows,
        a_left=np.array([True, False, True, True]),
        len_a=np.array([10, 20.0]),
        len_b=np.array([5, 5.0]),
        seconds=np.array([5, 6, 7, 8.0]),
        gold=np.array([-1, A]),
    )
    report = annotator_report(j)
    assert {"weight", "gold_accuracy", "position_bias", "length_bias", "tie_rate", "median_seconds"} <= set(
        report
    )
    assert all(len(col) == 2 for col in report.values())
