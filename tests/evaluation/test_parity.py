"""Parity with the reference implementations: crowd-kit's DawidSkene and the krippendorff package."""

import numpy as np
import pytest

from evaluation.stats.aggregation import aggregate
from evaluation.stats.agreement import krippendorff_alpha, krippendorff_alpha_from_counts
from evaluation.stats.judgments import A, B, Judgments
from evaluation.stats.simulation import simulate

pd = pytest.importorskip("pandas")
crowdkit = pytest.importorskip("crowdkit.aggregation")
krippendorff = pytest.importorskip("krippendorff")

# crowd-kit 1.4 uses pandas APIs that pandas 3 deprecates; that is crowd-kit's business.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::Warning:crowdkit"
)


def _crowdkit_fit(j: Judgments, **kw):
    df = pd.DataFrame({"task": j.item, "worker": j.worker, "label": j.label.astype(np.int64)})
    return crowdkit.DawidSkene(**kw).fit(df)


def _crowdkit_errors(ck, n_workers: int) -> np.ndarray:
    """crowd-kit's errors_ (index worker, observed label; columns true label) as [worker, truth, said]."""
    errors = np.zeros((n_workers, 2, 2))
    table = ck.errors_.reset_index()
    for truth in (A, B):
        errors[table["worker"].to_numpy(), truth, table["label"].to_numpy()] = table[truth].to_numpy()
    return errors


def _crowdkit_proba(ck) -> np.ndarray:
    return ck.probas_.sort_index()[[A, B]].to_numpy()


# crowd-kit's M step is plain maximum likelihood with a 1e-10 floor and an unsmoothed class
# prior, initialized from majority-vote shares like ours; ours matches with smoothing 0. On data
# without ties our spare tie class is disabled, so the two run the same algorithm.
CROWDKIT_OPTIONS = dict(smoothing=0.0, prior_smoothing=0.0)


@pytest.mark.parametrize("k", [1, 4, 15])
def test_same_em_iterates_as_crowdkit(k):
    # crowd-kit with tol=-inf runs exactly k iterations (E, M); its probas_ are the k-th E step
    # and its errors_ the k-th M step. Ours with max_iter=k ends with one more E step, so its
    # confusion is crowd-kit's k-th M step and its posteriors with max_iter=k-1 the k-th E step.
    j, _ = simulate(50, 2000, 5, accuracy=(0.55, 0.95), seed=0)
    ck = _crowdkit_fit(j, n_iter=k, tol=-np.inf)
    assert len(ck.loss_history_) == k
    after_m = aggregate(j, "dawid_skene", max_iter=k, tol=0.0, **CROWDKIT_OPTIONS)
    after_e = aggregate(j, "dawid_skene", max_iter=k - 1, tol=0.0, **CROWDKIT_OPTIONS)
    np.testing.assert_allclose(after_m.confusion[:, :2, :2], _crowdkit_errors(ck, j.n_workers), atol=1e-9)
    np.testing.assert_allclose(after_m.prior[[A, B]], ck.priors_[[A, B]].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(after_e.proba[:, :2], _crowdkit_proba(ck), atol=1e-9)


def test_converged_labels_and_error_rates_match_crowdkit():
    # Each run to its own stopping rule: same labels, same per-worker error rates.
    j, truth = simulate(50, 2000, 5, accuracy=(0.55, 0.95), seed=2)
    ck = _crowdkit_fit(j, n_iter=200, tol=1e-7)
    ours = aggregate(j, "dawid_skene", tol=1e-12, max_iter=500, **CROWDKIT_OPTIONS)
    assert ours.converged
    ck_proba = _crowdkit_proba(ck)
    decided = np.abs(ck_proba[:, A] - ck_proba[:, B]) > 1e-9  # crowd-kit breaks exact ties to A
    same = (ours.label[decided] == np.argmax(ck_proba, axis=1)[decided]).mean()
    assert same >= 0.995, same
    np.testing.assert_allclose(ours.confusion[:, :2, :2], _crowdkit_errors(ck, j.n_workers), atol=1e-3)
    np.testing.assert_allclose(ours.proba[:, :2], ck_proba, atol=0.01)
    assert (ours.label == truth.label).mean() > 0.9


def test_default_options_agree_with_crowdkit_defaults():
    # Our defaults smooth the confusion matrices (0.1 pseudo-counts) and stop on a different
    # tolerance; the labels still agree almost everywhere.
    j, _ = simulate(50, 2000, 5, accuracy=(0.55, 0.95), seed=2)
    ck = _crowdkit_fit(j)
    ck_labels = np.argmax(ck.probas_.sort_index()[[A, B]].to_numpy(), axis=1)
    assert (aggregate(j, "dawid_skene").label == ck_labels).mean() >= 0.99


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_krippendorff_alpha_matches_package(n_classes):
    rng = np.random.default_rng(n_classes)
    n_coders, n_units = 8, 120
    # Correlated ratings so alpha is far from 0, with 40% missing values.
    truth = rng.integers(0, n_classes, n_units)
    data = np.where(
        rng.random((n_coders, n_units)) < 0.6, truth, rng.integers(0, n_classes, (n_coders, n_units))
    )
    data = data.astype(float)
    data[rng.random(data.shape) < 0.4] = np.nan
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")

    coder, unit = np.nonzero(~np.isnan(data))
    values = data[coder, unit].astype(np.int64)
    counts = np.zeros((n_units, n_classes))
    np.add.at(counts, (unit, values), 1)
    assert krippendorff_alpha_from_counts(counts) == pytest.approx(expected, abs=1e-9)
    if n_classes == 3:
        j = Judgments(item=unit, worker=coder, label=values)
        assert krippendorff_alpha(j) == pytest.approx(expected, abs=1e-9)
