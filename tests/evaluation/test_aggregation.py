"""Aggregation methods on hand-made cases with the arithmetic written out."""

import numpy as np
import pytest

from evaluation.stats.aggregation import aggregate, pool_disagreement
from evaluation.stats.judgments import TIE, A, B, Judgments, argmax_label
from evaluation.stats.simulation import simulate


def J(rows, **kw):
    """Judgments from (item, worker, label) rows."""
    item, worker, label = np.array(rows).T
    return Judgments(item=item, worker=worker, label=label, **kw)


# --------------------------------------------------------------------------- Judgments


def test_judgments_coerces_dtypes_and_infers_sizes():
    j = J([(0, 0, A), (2, 3, TIE)])
    assert j.item.dtype == np.int64 and j.worker.dtype == np.int64 and j.label.dtype == np.int8
    assert (j.n, j.n_items, j.n_workers) == (2, 3, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(item=[0, 1], worker=[0], label=[0, 0]), "same length"),
        (dict(item=[0], worker=[0], label=[3]), "label"),
        (dict(item=[-1], worker=[0], label=[0]), ">= 0"),
        (dict(item=[5], worker=[0], label=[0], n_items=3), "n_items"),
        (dict(item=[0], worker=[0], label=[0], a_left=[True, False]), "a_left"),
        (dict(item=[0], worker=[0], label=[0], a_left_known=[True]), "a_left_known needs a_left"),
        (dict(item=[0], worker=[0], label=[0], a_left=[True], a_left_known=[True, False]), "a_left_known"),
        (dict(item=[0], worker=[0], label=[0], gold=[0, 1]), "gold"),
        (dict(item=[0], worker=[0], label=[0], gold=[4]), "gold"),
        (dict(item=[0], worker=[0], label=[0], both_bad=[True]), "both_bad"),
        (dict(item=[0], worker=[0], label=[0], pool=[0, 1]), "pool"),
        (dict(item=[0], worker=[0], label=[0], seconds=[-1.0]), "seconds"),
        (dict(item=[0.5], worker=[0], label=[0]), "integers"),
    ],
)
def test_judgments_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Judgments(**kwargs)


def test_subset_keeps_index_spaces():
    j = J([(0, 0, A), (1, 1, B), (2, 2, TIE)], a_left=[True, False, True], a_left_known=[True, False, True])
    s = j.subset(j.label != TIE)
    assert (s.n, s.n_items, s.n_workers) == (2, 3, 3)
    assert s.a_left.tolist() == [True, False]
    assert s.a_left_known.tolist() == [True, False] and s.order_known.tolist() == [True, False]


def test_order_known_defaults():
    assert J([(0, 0, A)]).order_known is None  # no display order at all
    assert J([(0, 0, A), (1, 0, B)], a_left=[True, False]).order_known.tolist() == [True, True]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        aggregate(J([(0, 0, A)]), "median")


# --------------------------------------------------------------------------- majority


def test_majority_vote_shares_and_labels():
    # item 0: A, A, B    -> (2/3, 1/3, 0), label A
    # item 1: A, B       -> (1/2, 1/2, 0), an A/B split: label tie
    # item 2: tie, tie, A -> (1/3, 0, 2/3), label tie
    # item 3: no votes   -> (1/3, 1/3, 1/3)
    j = J(
        [(0, 0, A), (0, 1, A), (0, 2, B), (1, 0, A), (1, 1, B), (2, 0, TIE), (2, 1, TIE), (2, 2, A)],
        n_items=4,
    )
    r = aggregate(j, "majority")
    np.testing.assert_allclose(r.proba, [[2 / 3, 1 / 3, 0], [0.5, 0.5, 0], [1 / 3, 0, 2 / 3], [1 / 3] * 3])
    assert r.label.tolist() == [A, TIE, TIE, TIE]
    np.testing.assert_allclose(r.confidence, [2 / 3, 0.5, 2 / 3, 1 / 3])
    assert r.n_judgments.tolist() == [3, 2, 3, 0]
    np.testing.assert_allclose(r.p_a + r.p_b + r.p_tie, 1.0)


def test_weighted_majority():
    # worker 0 (weight 1) says A, worker 1 (weight 3) says B: (1/4, 3/4, 0).
    j = J([(0, 0, A), (0, 1, B)])
    r = aggregate(j, "majority", worker_weights=np.array([1.0, 3.0]))
    np.testing.assert_allclose(r.proba, [[0.25, 0.75, 0.0]])


def test_argmax_label_breaks_shared_maximum_to_tie():
    assert argmax_label(
        np.array([[0.6, 0.4, 0], [0.4, 0.4, 0.2], [0.5, 0, 0.5], [0.2, 0.3, 0.5]])
    ).tolist() == [A, TIE, TIE, TIE]


def test_gold_items_are_clamped():
    # Both votes say A, but the item is gold B.
    j = J([(0, 0, A), (0, 1, A), (1, 0, A)], gold=np.array([B, -1]))
    for method in ("majority", "gold_weighted", "dawid_skene"):
        r = aggregate(j, method)
        np.testing.assert_allclose(r.proba[0], [0, 1, 0])
    r = aggregate(j, "majority", clamp_gold=False)
    np.testing.assert_allclose(r.proba[0], [1, 0, 0])


# --------------------------------------------------------------------------- gold weighted


def test_gold_weighted_vote_by_hand():
    # Gold items 0-3 (all truth A). Worker 0 gets 4/4 right: acc = (2+4)/(3+4) = 6/7,
    # weight log((6/7)/(1/7)) = log 6. Worker 1 gets 0/4: acc = 2/7 < 1/2, weight 0.
    # Worker 2 has no gold: acc = 2/3, weight log 2.
    # Item 4: w0 says A, w1 says B, w2 says B -> scores (log 6, 0 + log 2, 0),
    # softmax -> (6, 2, 1) / 9.
    rows = [(i, 0, A) for i in range(4)] + [(i, 1, B) for i in range(4)]
    rows += [(4, 0, A), (4, 1, B), (4, 2, B)]
    j = J(rows, gold=np.array([A, A, A, A, -1]))
    r = aggregate(j, "gold_weighted")
    np.testing.assert_allclose(r.accuracy, [6 / 7, 2 / 7, 2 / 3])
    np.testing.assert_allclose(r.proba[4], [6 / 9, 2 / 9, 1 / 9])
    assert r.label[4] == A  # one trusted annotator outweighs an untrusted one plus an unknown


# --------------------------------------------------------------------------- Dawid–Skene


def _four_items():
    # Truth (initial posteriors, one-hot): items 0, 2 are A; items 1, 3 are B.
    # item 0: w0 A, w1 A, w2 B     item 1: w0 B, w1 B, w2 A
    # item 2: w0 A, w1 A, w2 B     item 3: w0 A, w1 B, w2 B
    rows = [(0, 0, A), (0, 1, A), (0, 2, B), (1, 0, B), (1, 1, B), (1, 2, A),
            (2, 0, A), (2, 1, A), (2, 2, B), (3, 0, A), (3, 1, B), (3, 2, B)]  # fmt: skip
    init = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    return rows, init


def test_dawid_skene_one_step_by_hand():
    # M step from the one-hot init with smoothing 1 (pseudo-count in each of the 3 columns):
    #   w0: truth A (items 0, 2) said A, A -> (2+1, 0+1, 0+1)/5 = (3, 1, 1)/5
    #       truth B (items 1, 3) said B, A -> (1+1, 1+1, 1)/5    = (2, 2, 1)/5
    #   w1: truth A: A, A -> (3, 1, 1)/5;   truth B: B, B -> (1, 3, 1)/5
    #   w2: truth A: B, B -> (1, 3, 1)/5;   truth B: A, B -> (2, 2, 1)/5
    #   truth tie never seen: (0+1, 0+1, 0+1)/3. Prior: nobody says tie -> tie disabled;
    #   (2, 2) items with prior_smoothing 0 -> (1/2, 1/2, 0).
    # E step, item 3 (w0 A, w1 B, w2 B):
    #   A: 3/5 * 1/5 * 3/5 = 9/125     B: 2/5 * 3/5 * 2/5 = 12/125   -> (3/7, 4/7)
    # item 0 (w0 A, w1 A, w2 B):
    #   A: 3/5 * 3/5 * 3/5 = 27/125    B: 2/5 * 1/5 * 2/5 = 4/125    -> (27/31, 4/31)
    #   (w2's B is evidence for A: she is usually wrong.)
    rows, init = _four_items()
    r = aggregate(J(rows), "dawid_skene", init=init, max_iter=0, smoothing=1.0, prior_smoothing=0.0)
    np.testing.assert_allclose(r.confusion[0], [[3 / 5, 1 / 5, 1 / 5], [2 / 5, 2 / 5, 1 / 5], [1 / 3] * 3])
    np.testing.assert_allclose(r.confusion[2, :2], [[1 / 5, 3 / 5, 1 / 5], [2 / 5, 2 / 5, 1 / 5]])
    np.testing.assert_allclose(r.prior, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(r.proba[3], [3 / 7, 4 / 7, 0])
    np.testing.assert_allclose(r.proba[0], [27 / 31, 4 / 31, 0])
    assert r.iterations == 0 and not r.converged


def test_dawid_skene_debiased_likelihood_by_hand():
    # Same confusion matrices (the first M step counts every judgment as content-driven) and
    # lam_left = lam_right = 0.1, A shown on the left everywhere. Item 3:
    #   w0 says A = left:  truth A 0.8*3/5 + 0.1 = 0.58   truth B 0.8*2/5 + 0.1 = 0.42
    #   w1 says B = right: truth A 0.8*1/5 + 0.1 = 0.26   truth B 0.8*3/5 + 0.1 = 0.58
    #   w2 says B = right: truth A 0.8*3/5 + 0.1 = 0.58   truth B 0.8*2/5 + 0.1 = 0.42
    #   A: .58*.26*.58 = 0.087464   B: .42*.58*.42 = 0.102312   -> P(A) = 0.087464/0.189776
    rows, init = _four_items()
    j = J(rows, a_left=np.ones(len(rows), dtype=bool))
    r = aggregate(
        j, "dawid_skene_debiased", init=init, max_iter=0, smoothing=1.0, prior_smoothing=0.0, bias_init=0.1
    )
    np.testing.assert_allclose(r.proba[3, A], 0.087464 / 0.189776, rtol=1e-12)
    np.testing.assert_allclose(r.left_bias, 0.0)  # lam_left - lam_right


def test_debiased_needs_display_order():
    with pytest.raises(ValueError, match="a_left"):
        aggregate(J([(0, 0, A)]), "dawid_skene_debiased")


def test_unknown_display_order_marginalizes_the_position_click():
    # One worker (lam_left = 0.3, lam_right = 0.1) says A three times: with A on the left, with B
    # on the left, and with the order unknown. The unknown one's likelihood is the mean of the
    # two orders' (A on the left with probability 1/2):
    #   0.6 pi[k, A] + 0.3   and   0.6 pi[k, A] + 0.1   ->   0.6 pi[k, A] + 0.2.
    # A tie involves no side at all: 0.6 pi[k, tie] in every case.
    from evaluation.stats.dawid_skene import _combo_likelihood, _Combos

    j = J(
        [(0, 0, A), (1, 0, A), (2, 0, A), (3, 0, TIE), (4, 0, TIE)],
        a_left=[True, False, False, True, False],
        a_left_known=[True, True, False, True, False],
    )
    combos = _Combos(j, with_side=True)
    pi = np.array([[[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.25, 0.25, 0.5]]])  # [worker, truth, said]
    lik, (content, to_left, to_right) = _combo_likelihood(pi, combos, np.array([0.3]), np.array([0.1]))
    col = combos.counts.indices[combos.counts.indptr[:-1]]  # each judgment's combo (one per item)
    a_left, b_left, unknown, tie_known, tie_unknown = (lik[:, c] for c in col)
    np.testing.assert_allclose(a_left, 0.6 * pi[0, :, A] + 0.3)
    np.testing.assert_allclose(b_left, 0.6 * pi[0, :, A] + 0.1)
    np.testing.assert_allclose(unknown, (a_left + b_left) / 2)
    np.testing.assert_allclose(tie_known, 0.6 * pi[0, :, TIE])
    np.testing.assert_allclose(tie_unknown, tie_known)
    # EM's split: the content-driven share, and where a position click went. Known order: all
    # to the side shown; unknown order: 3:1 left:right, as lam_left : lam_right.
    np.testing.assert_allclose(content[:, col[2]], 0.6 * pi[0, :, A] / unknown)
    np.testing.assert_allclose(content[:, col[3]], 1.0)
    assert (to_left[col[0]], to_right[col[0]]) == (1.0, 0.0)  # A said, A on the left
    assert (to_left[col[1]], to_right[col[1]]) == (0.0, 1.0)  # A said, A on the right
    np.testing.assert_allclose([to_left[col[2]], to_right[col[2]]], [0.75, 0.25])


def test_debiased_equals_plain_dawid_skene_when_no_display_order_is_known():
    # Left-biased annotators, but no judgment says how it was shown: there is no position
    # signal, so the debiased model has nothing to add and must give plain Dawid–Skene.
    left = np.zeros(15)
    left[:3] = 0.6
    j, _ = simulate(15, 300, 5, left_bias=left, tie_rate=0.1, gold_fraction=0.1, seed=11)
    unknown = Judgments(
        item=j.item,
        worker=j.worker,
        label=j.label,
        a_left=j.a_left,
        a_left_known=np.zeros(j.n, dtype=bool),
        n_items=j.n_items,
        n_workers=j.n_workers,
        gold=j.gold,
    )
    plain = aggregate(unknown, "dawid_skene")
    debiased = aggregate(unknown, "dawid_skene_debiased")
    np.testing.assert_allclose(debiased.proba, plain.proba, rtol=0, atol=1e-12)
    np.testing.assert_allclose(debiased.confusion, plain.confusion, rtol=0, atol=1e-12)
    np.testing.assert_allclose(debiased.accuracy, plain.accuracy, rtol=0, atol=1e-12)
    assert debiased.iterations == plain.iterations and debiased.converged
    assert np.isnan(debiased.left_bias).all()  # not identifiable
    # The same with pool balancing.
    pooled = Judgments(
        item=j.item,
        worker=j.worker,
        label=j.label,
        a_left=j.a_left,
        a_left_known=np.zeros(j.n, dtype=bool),
        n_workers=j.n_workers,
        pool=np.arange(j.n_workers) % 3,
    )
    np.testing.assert_allclose(
        aggregate(pooled, "dawid_skene_debiased", pool_balanced=True).proba,
        aggregate(pooled, "dawid_skene", pool_balanced=True).proba,
        rtol=0,
        atol=1e-12,
    )


def test_debiased_dawid_skene_on_known_and_unknown_display_orders():
    # 20 annotators; 0-2 click left 60% of the time. Annotators 15-19 are imported: no display
    # order on any vote. Annotators 0-14 have the order on half their votes.
    n_workers = 20
    left = np.zeros(n_workers)
    left[:3] = 0.6
    j, truth = simulate(n_workers, 2000, 5, accuracy=(0.75, 0.9), left_bias=left, seed=12)
    rng = np.random.default_rng(0)
    known = (rng.random(j.n) < 0.5) & (j.worker < 15)
    mixed = Judgments(item=j.item, worker=j.worker, label=j.label, a_left=j.a_left, a_left_known=known)
    r = aggregate(mixed, "dawid_skene_debiased")
    assert r.converged and np.isfinite(r.proba).all()
    np.testing.assert_allclose(r.proba.sum(axis=1), 1.0)
    # Position bias is learned where some order is known, and is n/a where none is.
    assert np.isnan(r.left_bias[15:]).all() and np.isfinite(r.left_bias[:15]).all()
    assert r.left_bias[:3].min() > 0.3 and np.abs(r.left_bias[3:15]).max() < 0.15
    assert (r.label == truth.label).mean() >= (aggregate(mixed, "dawid_skene").label == truth.label).mean()
    # Every order known (a_left_known all true) is the same as not passing a_left_known.
    ones = np.ones(j.n, dtype=bool)
    all_known = Judgments(item=j.item, worker=j.worker, label=j.label, a_left=j.a_left, a_left_known=ones)
    plain_known = Judgments(item=j.item, worker=j.worker, label=j.label, a_left=j.a_left)
    np.testing.assert_allclose(
        aggregate(all_known, "dawid_skene_debiased").proba,
        aggregate(plain_known, "dawid_skene_debiased").proba,
        rtol=0,
        atol=1e-12,
    )


def test_dawid_skene_learns_an_adversarial_annotator():
    # Workers 0-3 are 90% right; worker 4 always gives the opposite answer. Majority vote
    # ignores that; Dawid–Skene learns worker 4's flipped confusion and uses it.
    j, truth = simulate(5, 400, 5, accuracy=np.array([0.9, 0.9, 0.9, 0.9, 0.0]), seed=3)
    r = aggregate(j, "dawid_skene")
    assert r.converged
    assert r.confusion[4, A, B] > 0.95 and r.confusion[4, B, A] > 0.95
    assert r.accuracy[4] < 0.05 and np.all(r.accuracy[:4] > 0.85)
    assert (r.label == truth.label).mean() > (aggregate(j, "majority").label == truth.label).mean() + 0.02


def test_gold_steers_dawid_skene_against_a_wrong_majority():
    # Workers 0 and 1 always give the wrong answer, worker 2 always the right one. Without
    # gold, EM believes the majority. With 20% gold items clamped during EM, the confusion
    # matrices learn who is right and the non-gold items follow worker 2.
    j, truth = simulate(3, 500, 3, accuracy=np.array([0.0, 0.0, 1.0]), gold_fraction=0.2, seed=6)
    not_gold = j.gold < 0
    without = aggregate(Judgments(item=j.item, worker=j.worker, label=j.label), "dawid_skene")
    assert (without.label[not_gold] == truth.label[not_gold]).mean() == 0.0
    with_gold = aggregate(j, "dawid_skene")
    assert (with_gold.label[not_gold] == truth.label[not_gold]).mean() == 1.0
    assert with_gold.accuracy[2] > 0.95 and np.all(with_gold.accuracy[:2] < 0.05)


def test_dawid_skene_order_of_judgments_does_not_matter():
    j, _ = simulate(10, 200, 3, tie_rate=0.1, seed=5)
    perm = np.random.default_rng(0).permutation(j.n)
    shuffled = Judgments(item=j.item[perm], worker=j.worker[perm], label=j.label[perm], a_left=j.a_left[perm])
    for method in ("dawid_skene", "dawid_skene_debiased"):
        np.testing.assert_allclose(aggregate(shuffled, method).proba, aggregate(j, method).proba, atol=1e-12)


def test_unused_tie_class_is_disabled():
    # Without any tie vote the spare latent class would otherwise absorb items over many iterations.
    j, truth = simulate(20, 500, 5, seed=4)
    r = aggregate(j, "dawid_skene", smoothing=0.0, prior_smoothing=0.0, tol=0.0, max_iter=300)
    assert r.prior[TIE] == 0.0 and np.all(r.p_tie == 0.0)
    assert (r.label == truth.label).mean() > 0.9


# --------------------------------------------------------------------------- pools


def _two_pools():
    # item 0: pool 0 (workers 0, 1, 2) say A, A, A; pool 1 (worker 3) says B
    # item 1: pool 0 says A, B; pool 1 says A
    # item 2: only pool 0 votes (A)
    rows = [(0, 0, A), (0, 1, A), (0, 2, A), (0, 3, B), (1, 0, A), (1, 1, B), (1, 3, A), (2, 0, A)]
    return J(rows, pool=np.array([0, 0, 0, 1]))


def test_pool_balanced_majority():
    # item 0 by headcount: (3/4, 1/4). Pool-balanced: the item's total weight 4 is split 2 and 2,
    # each pool's votes share its 2 -> A 2, B 2 -> (1/2, 1/2), an A/B split (label tie).
    # item 1: pool 0 has A 1, B 1 -> scaled to 1.5 weight: A .75, B .75; pool 1 A 1.5
    #         -> A 2.25/3 = 0.75, B .25.
    j = _two_pools()
    plain = aggregate(j, "majority")
    balanced = aggregate(j, "majority", pool_balanced=True)
    np.testing.assert_allclose(plain.proba[0], [0.75, 0.25, 0])
    np.testing.assert_allclose(balanced.proba[0], [0.5, 0.5, 0])
    np.testing.assert_allclose(balanced.proba[1], [0.75, 0.25, 0])
    np.testing.assert_allclose(balanced.proba[2], [1, 0, 0])
    assert balanced.label[0] == TIE


def test_pool_balanced_dawid_skene_runs_and_needs_pools():
    j, truth = simulate(30, 600, 5, n_pools=3, seed=2)
    r = aggregate(j, "dawid_skene", pool_balanced=True)
    assert (r.label == truth.label).mean() > 0.85
    with pytest.raises(ValueError, match="pool"):
        aggregate(J([(0, 0, A)]), "majority", pool_balanced=True)


def test_empty_judgments_give_uniform_posteriors():
    j = Judgments(item=[], worker=[], label=[], a_left=[], n_items=2, n_workers=1, gold=np.array([-1, B]))
    for method in ("majority", "gold_weighted", "dawid_skene", "dawid_skene_debiased"):
        r = aggregate(j, method)
        np.testing.assert_allclose(r.proba, [[1 / 3] * 3, [0, 1, 0]])


def test_pool_disagreement_by_hand():
    # item 0: pool 0 shares (1, 0, 0), pool 1 (0, 1, 0): TV = 1/2 * (1 + 1) = 1
    # item 1: pool 0 (1/2, 1/2, 0), pool 1 (1, 0, 0): TV = 1/2 * (1/2 + 1/2) = 1/2
    # item 2: one pool only -> NaN. Matrix[0, 1] = mean(1, 1/2) over 2 shared items.
    d = pool_disagreement(_two_pools())
    np.testing.assert_allclose(d.per_item, [1.0, 0.5, np.nan])
    np.testing.assert_allclose(d.matrix, [[0.0, 0.75], [0.75, 0.0]])
    assert d.n_shared.tolist() == [[3, 2], [2, 2]]


# --------------------------------------------------------------------------- simulate


def test_simulate_gives_distinct_workers_per_item_and_known_accuracy():
    j, truth = simulate(40, 3000, 5, accuracy=np.full(40, 0.8), activity_sigma=1.0, seed=1)
    pairs = j.item * j.n_workers + j.worker
    assert np.unique(pairs).size == j.n == 15000
    assert abs((j.label == truth.label[j.item]).mean() - 0.8) < 0.02
    assert abs(j.a_left.mean() - 0.5) < 0.02


def test_undecided_items_are_those_whose_voters_carry_no_weight():
    """Item 0: only a weight-0 voter (undecided, whatever a vote share says); item 1: one
    voter with weight; item 2: no votes; item 3: gold, decided by its answer."""
    from evaluation.stats.aggregation import undecided_items

    j = Judgments(
        item=np.array([0, 1, 1, 3]),
        worker=np.array([0, 0, 1, 0]),
        label=np.array([0, 1, 1, 0]),
        n_items=4,
        gold=np.array([-1, -1, -1, 0]),
    )
    weights = np.array([0.0, 0.4])
    assert undecided_items(j, weights).tolist() == [True, False, True, False]
    # The weighted vote alone would call item 0 a three-way split; it is undecided instead.
    assert np.allclose(aggregate(j, "majority", worker_weights=weights).proba[0], 1 / 3)
    assert undecided_items(j, np.array([np.nan, 1.0])).tolist() == [True, False, True, False]
