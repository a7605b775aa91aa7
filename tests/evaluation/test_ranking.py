"""Bradley–Terry strengths on hand-made cases."""

import numpy as np
import pytest
from scipy.optimize import brentq, minimize

from evaluation.stats.ranking import bradley_terry, outcome_scores


def test_two_models_by_hand():
    # Model 0 beats model 1 three times and loses once. Without the prior, the MLE has
    # p0 / (p0 + p1) = 3/4, so p0 / p1 = 3 and the centred log-strengths are +-ln(3)/2.
    bt = bradley_terry([0, 0, 0, 0], [1, 1, 1, 1], np.array([0, 0, 0, 1]), prior_games=0.0, n_boot=0)
    np.testing.assert_allclose(bt.strength, [np.log(3) / 2, -np.log(3) / 2], atol=1e-8)
    np.testing.assert_allclose(bt.expected[0, 1], 0.75, atol=1e-8)
    assert bt.converged


def test_tie_is_half_a_win():
    # One win and one tie for model 0 = 1.5 of 2: the same 3/4 as above.
    labels = bradley_terry([0, 0], [1, 1], np.array([0, 2]), prior_games=0.0, n_boot=0)
    scores = bradley_terry([0, 0], [1, 1], np.array([1.0, 0.5]), prior_games=0.0, n_boot=0)
    np.testing.assert_allclose(labels.strength, [np.log(3) / 2, -np.log(3) / 2], atol=1e-8)
    np.testing.assert_allclose(scores.strength, labels.strength)
    np.testing.assert_allclose(outcome_scores(np.array([0, 1, 2])), [1.0, 0.0, 0.5])


def test_prior_keeps_an_unbeaten_model_finite():
    # One game, model 0 wins, prior of r = 1 virtual half-won game against strength 1.
    # By symmetry p1 = 1/p0 = 1/x and model 1's MM fixed point reads
    #   0 + 1/2 = (1/x) (1/(x + 1/x) + 1/(1/x + 1))  <=>  1/2 = 1/(x^2 + 1) + 1/(1 + x),
    # whose root is x = 2.13.
    x = brentq(lambda x: 1 / (x * x + 1) + 1 / (1 + x) - 0.5, 1.0, 10.0)
    bt = bradley_terry([0], [1], np.array([0]), n_boot=0)
    np.testing.assert_allclose(bt.strength, [np.log(x), -np.log(x)], atol=1e-8)
    assert np.all(np.isfinite(bt.strength))


def test_matches_direct_maximum_likelihood():
    rng = np.random.default_rng(0)
    true = np.array([0.0, 0.5, 1.0, -0.7, 0.2])
    a = rng.integers(0, 5, 600)
    b = (a + rng.integers(1, 5, 600)) % 5
    p_a = 1 / (1 + np.exp(-(true[a] - true[b])))
    u = rng.random(600)
    outcome = np.where(u < 0.1, 2, np.where(u < 0.1 + 0.9 * p_a, 0, 1))
    bt = bradley_terry(a, b, outcome, prior_games=0.0, n_boot=0)

    s = outcome_scores(outcome)

    def nll(theta):
        d = theta[a] - theta[b]
        return -np.sum(s * -np.logaddexp(0, -d) + (1 - s) * -np.logaddexp(0, d))

    ref = minimize(nll, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(bt.strength, ref - ref.mean(), atol=1e-5)
    assert np.argmax(bt.strength) == 2 and np.argmin(bt.strength) == 3


def test_win_rate_matrix_and_bootstrap():
    # 0 vs 1: 0 wins, tie -> 0 scores 1.5/2 = 0.75 against 1 (and 1 scores 0.25 against 0).
    # 1 vs 2: 2 wins -> 0 for 1, 1 for 2.  0 and 2 never met: NaN.
    bt = bradley_terry([0, 1, 1], [1, 0, 2], np.array([0, 2, 1]), n_boot=100)
    np.testing.assert_allclose(
        bt.win_rate, [[np.nan, 0.75, np.nan], [0.25, np.nan, 0.0], [np.nan, 1.0, np.nan]]
    )
    assert bt.n_games.tolist() == [[0, 2, 0], [2, 0, 1], [0, 1, 0]]
    assert np.all(bt.low <= bt.strength + 1e-9) and np.all(bt.strength <= bt.high + 1e-9)
    assert bt.strength.sum() == pytest.approx(0.0)


def test_bootstrap_interval_narrows_with_more_games():
    rng = np.random.default_rng(1)

    def run(n):
        a = np.zeros(n, dtype=int)
        b = np.ones(n, dtype=int)
        outcome = (rng.random(n) > 0.7).astype(int)  # model 0 wins 70%
        return bradley_terry(a, b, outcome, seed=2)

    small, large = run(40), run(1000)
    assert (large.high - large.low)[0] < (small.high - small.low)[0] / 3
    assert large.low[0] < np.log(0.7 / 0.3) / 2 < large.high[0]


def test_rejects_self_comparison_and_bad_scores():
    with pytest.raises(ValueError, match="itself"):
        bradley_terry([0], [0], np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bradley_terry([0], [1], np.array([1.5]))


# --------------------------------------------------------------------------- against choix


def _games_from_matrix(wins: np.ndarray):
    """(model_a, model_b, outcome) with ``wins[i, j]`` games won by i against j (A = winner)."""
    a, b = [], []
    for i, j in zip(*np.nonzero(wins)):
        a += [i] * int(wins[i, j])
        b += [j] * int(wins[i, j])
    return np.array(a), np.array(b), np.zeros(len(a), dtype=np.int64)


HAND_MADE = {
    "three in a cycle with a favourite": np.array([[0, 7, 4], [3, 0, 6], [6, 4, 0]]),
    "four, lopsided": np.array([[0, 9, 8, 10], [1, 0, 6, 7], [2, 4, 0, 5], [1, 3, 5, 0]]),
    "five, sparse but connected both ways": np.array(
        [[0, 3, 0, 0, 1], [1, 0, 2, 0, 0], [0, 2, 0, 4, 0], [0, 0, 1, 0, 2], [2, 0, 0, 1, 0]]
    ),
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_bradley_terry_agrees_with_choix(name):
    choix = pytest.importorskip("choix")
    wins = HAND_MADE[name]
    a, b, outcome = _games_from_matrix(wins)
    ours = bradley_terry(a, b, outcome, n_models=wins.shape[0], prior_games=0.0, n_boot=0)
    data = [(int(i), int(j)) for i, j in zip(a, b)]
    theirs = choix.ilsr_pairwise(wins.shape[0], data, alpha=0.0, tol=1e-12, max_iter=10_000)
    theirs = theirs - theirs.mean()
    np.testing.assert_allclose(ours.strength, theirs, atol=1e-6)
    # choix's MAP estimate with an L2 penalty on the log-strengths is another model: the
    # ordering still agrees.
    regularised = choix.opt_pairwise(wins.shape[0], data, alpha=0.5)
    assert list(np.argsort(ours.strength)) == list(np.argsort(regularised))


def test_bootstrap_over_prompts_is_wider_when_a_prompt_repeats_its_verdict():
    # 10 prompts, each judged 10 times with one verdict per prompt (7 won by model 0): the
    # evidence is 10 prompts, not 100 clicks, and resampling prompts says so.
    a = np.zeros(100, dtype=np.int64)
    b = np.ones(100, dtype=np.int64)
    prompt = np.repeat(np.arange(10), 10)
    outcome = np.where(prompt < 7, 0, 1)
    by_click = bradley_terry(a, b, outcome, n_boot=300, seed=1)
    by_prompt = bradley_terry(a, b, outcome, n_boot=300, seed=1, groups=prompt)
    width = lambda bt: bt.high[0] - bt.low[0]  # noqa: E731
    assert width(by_prompt) > 2 * width(by_click)
    assert by_prompt.low[0] < by_prompt.strength[0] < by_prompt.high[0]


def test_win_rates_by_hand_with_their_prompt_intervals():
    from evaluation.stats.ranking import win_rates

    # Model 0 vs 1: 3 wins, 1 loss; model 1 vs 2: one tie. Model 2 never played model 0.
    a, b = np.array([0, 0, 0, 0, 1]), np.array([1, 1, 1, 1, 2])
    outcome = np.array([0, 0, 0, 1, 2])
    w = win_rates(a, b, outcome, n_models=4, groups=np.array([0, 0, 1, 2, 3]), n_boot=200)
    np.testing.assert_allclose(w.rate[:3], [0.75, (1 + 0.5) / 5, 0.5])
    assert np.isnan(w.rate[3]) and w.n_games.tolist() == [4, 5, 1, 0]
    assert w.low[0] <= 0.75 <= w.high[0] and w.low[0] < w.high[0]
    with pytest.raises(ValueError, match="one label per comparison"):
        win_rates(a, b, outcome, groups=np.array([0, 1]))
