"""Simulated annotators with known accuracies and biases: do the estimates recover them?

50 annotators x 2000 comparisons, 5 judgments per comparison, accuracies spread 0.55-0.95,
seeded. Annotator 0 clicks left 60% of the time whatever the content (strong position bias),
annotator 1 30%; annotators 2 and 3 click the longer response 50% / 30% of the time.
"""


import numpy as np
import pytest
from scipy.stats import spearmanr

from evaluation.stats.aggregation import aggregate
from evaluation.stats.agreement import agreement_summary
from evaluation.stats.bias import annotator_weights, length_bias, position_bias
from evaluation.stats.simulation import simulate

N_WORKERS, N_ITEMS, OVERLAP = 50, 2000, 5


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(7)
    accuracy = rng.uniform(0.55, 0.95, N_WORKERS)
    left = np.zeros(N_WORKERS)
    left[[0, 1]] = [0.6, 0.3]
    longer = np.zeros(N_WORKERS)
    longer[[2, 3]] = [0.5, 0.3]
    j, truth = simulate(
        N_WORKERS, N_ITEMS, OVERLAP, accuracy=accuracy, left_bias=left, length_bias=longer, seed=7
    )
    ds = aggregate(j, "dawid_skene")
    return j, truth, ds


def _accuracy(agg, truth) -> float:
    return float((agg.label == truth.label).mean())


def test_dawid_skene_recovers_reliabilities(world):
    j, truth, ds = world
    rho = spearmanr(ds.accuracy, truth.effective_accuracy).statistic
    assert rho >= 0.9, rho
    assert np.abs(ds.accuracy - truth.effective_accuracy).mean() < 0.05


def test_annotator_weights_rank_like_true_reliability(world):
    j, truth, ds = world
    w = annotator_weights(j, consensus=ds, ds_accuracy=ds.accuracy)
    rho = spearmanr(w.weight, truth.effective_accuracy).statistic
    assert rho >= 0.9, rho
    # The strongly left-biased annotator loses at least a third of their weight to the bias.
    assert w.position_factor[0] < 0.67
    assert np.all(w.position_factor[4:] > 0.8)


def test_gold_accuracy_recovers_reliabilities():
    # 30% gold items: ~60 gold judgments per annotator, so each gold accuracy has a standard
    # error near 0.05 against a 0.4 spread; over 20 seeds its Spearman with the truth ranged
    # 0.82-0.97 (median 0.915). Dawid–Skene, using every judgment and the gold clamps, ranks
    # better (0.915-0.98 over the same seeds).
    rng = np.random.default_rng(11)
    accuracy = rng.uniform(0.55, 0.95, N_WORKERS)
    j, truth = simulate(N_WORKERS, N_ITEMS, OVERLAP, accuracy=accuracy, gold_fraction=0.3, seed=11)
    w = annotator_weights(j, min_gold=10)
    assert np.all(w.accuracy_source == "gold")
    assert spearmanr(w.accuracy, accuracy).statistic >= 0.8
    ds = aggregate(j, "dawid_skene")
    assert spearmanr(ds.accuracy, accuracy).statistic >= 0.9
    # Gold items are clamped, so they are all "right".
    gold = j.gold >= 0
    assert np.all(ds.label[gold] == truth.label[gold])


# Noise levels behind the thresholds below: an annotator has ~200 judgments, so a left-pick
# rate has a standard error near 0.035. With 95% intervals, each of the 46-48 unbiased
# annotators is flagged with probability 0.05: ~2.4 expected, more than 7 has probability ~0.2%.
MAX_FALSE_FLAGS = 7


def test_position_bias_of_left_clicker_is_detected(world):
    j, truth, ds = world
    p = position_bias(j, ds)
    assert p.significant[0] and p.low[0] > 0.1  # true bias = 0.6 / 2 = 0.3
    assert p.bias[0] == pytest.approx(0.3, abs=0.1)
    assert p.significant[1] and p.bias[1] > 0  # true bias 0.15
    assert p.significant[2:].sum() <= MAX_FALSE_FLAGS
    # Relative to the consensus the bias is just as clear.
    assert p.relative[0] - 1.96 * p.relative_se[0] > 0.1


def test_length_bias_is_detected(world):
    j, truth, ds = world
    lb = length_bias(j, ds)
    assert lb.significant[2] and lb.bias[2] > 0.1
    assert lb.significant[3] and lb.bias[3] > 0
    assert lb.significant[4:].sum() <= MAX_FALSE_FLAGS
    assert lb.bias[2] > np.abs(lb.bias[4:]).max()


def test_dawid_skene_beats_majority_vote(world):
    j, truth, ds = world
    majority = aggregate(j, "majority")
    assert _accuracy(ds, truth) > _accuracy(majority, truth) + 0.01
    # The calibrated posteriors mean something: confident items are right more often.
    confident = ds.confidence > 0.99
    assert (ds.label[confident] == truth.label[confident]).mean() > 0.98
    assert (ds.label[~confident] == truth.label[~confident]).mean() < 0.9


def test_debiased_matches_plain_dawid_skene_with_few_biased(world):
    j, truth, ds = world
    debiased = aggregate(j, "dawid_skene_debiased")
    assert _accuracy(debiased, truth) >= _accuracy(ds, truth) - 0.005
    # lam_left of the left clicker (true 0.6) stands out from the unbiased annotators, whose
    # estimates scatter around 0 with the sampling noise of ~200 judgments.
    unbiased = np.abs(debiased.left_bias[4:])
    assert debiased.left_bias[0] > 0.35 and debiased.left_bias[0] > unbiased.max()
    assert np.median(unbiased) < 0.05


def test_debiased_beats_plain_dawid_skene_when_good_annotators_are_left_biased():
    # The 15 most accurate annotators click left half the time. Plain Dawid–Skene can only see
    # them as mediocre; the debiased model learns that their right-clicks are reliable.
    # (Over 30 seeds the gain ranged from +0.5 to +3.7 points.)
    rng = np.random.default_rng(101)
    accuracy = rng.uniform(0.55, 0.95, N_WORKERS)
    left = np.zeros(N_WORKERS)
    biased = np.argsort(-accuracy)[:15]
    left[biased] = 0.5
    j, truth = simulate(N_WORKERS, N_ITEMS, OVERLAP, accuracy=accuracy, left_bias=left, seed=1)
    ds = aggregate(j, "dawid_skene")
    debiased = aggregate(j, "dawid_skene_debiased")
    assert debiased.converged
    assert _accuracy(debiased, truth) > _accuracy(ds, truth)
    assert debiased.left_bias[biased].mean() == pytest.approx(0.5, abs=0.08)
    assert debiased.left_bias[biased].min() > 0.25
    unbiased = np.setdiff1d(np.arange(N_WORKERS), biased)
    assert np.median(np.abs(debiased.left_bias[unbiased])) < 0.05


def test_simulated_agreement_matches_theory():
    # Two independent annotators with accuracy 0.8 on binary items agree with probability
    # 0.8^2 + 0.2^2 = 0.68; Fleiss' kappa with balanced classes is (0.68 - 0.5)/0.5 = 0.36.
    j, _ = simulate(N_WORKERS, N_ITEMS, OVERLAP, accuracy=np.full(N_WORKERS, 0.8), seed=3)
    s = agreement_summary(j, n_boot=200)
    assert s["raw_agreement"]["low"] < 0.68 < s["raw_agreement"]["high"]
    assert s["fleiss_kappa"]["low"] < 0.36 < s["fleiss_kappa"]["high"]
    assert s["krippendorff_alpha"]["value"] == pytest.approx(0.36, abs=0.03)
