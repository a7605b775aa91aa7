"""Bradley–Terry strengths of models (or model rounds) from pairwise outcomes (pure numpy).

``P(i beats j) = p_i / (p_i + p_j)``. A comparison's outcome is the score of model A:
1 (A better), 0 (B better), 1/2 (tie; a tie is half a win for each), or any value in [0, 1]
(e.g. an aggregated ``p_a + p_tie / 2``). Fitted by Newton's method on the log-strengths
``t = log p``, maximizing::

    sum_i W_i t_i - sum_{i<j} N_ij log(e^t_i + e^t_j) + r/2 * sum_i (log s(t_i) + log s(-t_i))

where ``W_i`` is model i's total score and ``N_ij`` the games between i and j. The ``r``
terms are a weak prior: ``r`` (default 1) virtual games against a reference of strength 1,
half won, so a model that won every game still gets a finite strength and disconnected
models stay comparable. Strengths are reported as ``log p`` centred to mean 0
(``elo = 400 / ln 10 * strength``). Confidence intervals are percentile bootstraps (seeded)
that resample comparisons, or whole groups of them (``groups``: e.g. the prompt of each
comparison, so that several judgments of one prompt move together and the interval reflects
how many prompts were judged, not how many clicks).

:func:`win_rates`: each model's mean score against the others, with the same bootstrap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class BradleyTerry:
    strength: np.ndarray  # [n_models] log-strength, mean 0
    low: np.ndarray
    high: np.ndarray
    win_rate: np.ndarray  # [n_models, n_models] observed mean score of row vs column (NaN: no games)
    n_games: np.ndarray  # [n_models, n_models]
    iterations: int
    converged: bool

    @property
    def elo(self) -> np.ndarray:
        return self.strength * 400 / np.log(10)

    @property
    def expected(self) -> np.ndarray:
        """Model-predicted P(row beats column)."""
        d = self.strength[:, None] - self.strength[None, :]
        return 1 / (1 + np.exp(-d))


def outcome_scores(outcome: np.ndarray) -> np.ndarray:
    """Score of model A: labels 0/1/2 (A/B/tie) map to 1/0/0.5; floats are taken as scores."""
    outcome = np.asarray(outcome)
    if np.issubdtype(outcome.dtype, np.integer):
        if outcome.size and (outcome.min() < 0 or outcome.max() > 2):
            raise ValueError("integer outcomes must be 0 (A), 1 (B) or 2 (tie)")
        return np.array([1.0, 0.0, 0.5])[outcome]
    score = outcome.astype(np.float64)
    if score.size and (np.nanmin(score) < 0 or np.nanmax(score) > 1):
        raise ValueError("float outcomes are A's score and must lie in [0, 1]")
    return score


def _tables(model_a, model_b, score, weights, n_models):
    """Total score per model and the symmetric games matrix."""
    wins = np.bincount(model_a, weights=weights * score, minlength=n_models)
    wins += np.bincount(model_b, weights=weights * (1 - score), minlength=n_models)
    games = np.bincount(model_a * n_models + model_b, weights=weights, minlength=n_models * n_models)
    games = games.reshape(n_models, n_models)
    return wins, games + games.T


def _log_likelihood(theta, wins, games, prior_games) -> float:
    """The objective in the module docstring (``games`` symmetric with a zero diagonal)."""
    pair = 0.5 * (games * np.logaddexp(theta[:, None], theta[None, :])).sum()
    prior = -prior_games / 2 * (np.logaddexp(0.0, -theta) + np.logaddexp(0.0, theta)).sum()
    return float(wins @ theta - pair + prior)


def fit_strengths(
    wins: np.ndarray, games: np.ndarray, prior_games: float = 1.0, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, int, bool]:
    """Newton's method on the log-strengths; returns them centred, iterations, converged.

    Gradient ``g_i = W_i - sum_j N_ij s(t_i - t_j) + r/2 - r s(t_i)`` and Hessian
    ``H_ij = N_ij s'(t_i - t_j)``, ``H_ii = -sum_j N_ij s'(t_i - t_j) - r s'(t_i)`` with ``s``
    the logistic function. The objective is concave; steps are halved until it improves.
    """
    n = wins.shape[0]
    theta = np.zeros(n)
    current = _log_likelihood(theta, wins, games, prior_games)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        sig = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
        own = 1 / (1 + np.exp(-theta))
        grad = wins - (games * sig).sum(axis=1) + prior_games / 2 - prior_games * own
        curv = games * sig * (1 - sig)
        hess = curv - np.diag(curv.sum(axis=1) + prior_games * own * (1 - own))
        # Without a prior the strengths are only defined up to a constant: a tiny ridge fixes it.
        step = np.linalg.solve(hess - 1e-9 * np.eye(n), -grad)
        for _ in range(50):
            candidate = theta + step
            value = _log_likelihood(candidate, wins, games, prior_games)
            if value >= current - 1e-12:
                break
            step /= 2
        theta, current = candidate, value
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    return theta - theta.mean(), it, converged


def bradley_terry(
    model_a: np.ndarray,
    model_b: np.ndarray,
    outcome: np.ndarray,
    *,
    n_models: int | None = None,
    weights: np.ndarray | None = None,
    prior_games: float = 1.0,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> BradleyTerry:
    """Strengths, percentile bootstrap intervals and the observed win-rate matrix.

    ``groups``: one label per comparison; the bootstrap then draws whole groups (all the
    comparisons of a prompt at once) instead of single comparisons."""
    model_a = np.asarray(model_a, dtype=np.int64)
    model_b = np.asarray(model_b, dtype=np.int64)
    score = outcome_scores(outcome)
    if not (model_a.shape == model_b.shape == score.shape):
        raise ValueError("model_a, model_b and outcome must have the same length")
    if np.any(model_a == model_b):
        raise ValueError("a model cannot be compared with itself")
    n_models = (
        int(max(model_a.max(initial=-1), model_b.max(initial=-1)) + 1) if n_models is None else n_models
    )
    weights = np.ones(score.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)

    wins, games = _tables(model_a, model_b, score, weights, n_models)
    strength, iterations, converged = fit_strengths(wins, games, prior_games)

    # Observed mean score of row against column.
    row_score = np.bincount(model_a * n_models + model_b, weights=weights * score, minlength=n_models**2)
    row_score += np.bincount(
        model_b * n_models + model_a, weights=weights * (1 - score), minlength=n_models**2
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = row_score.reshape(n_models, n_models) / games
    win_rate[games == 0] = np.nan

    low = high = np.full(n_models, np.nan)
    if n_boot > 0 and score.shape[0]:
        reps = np.empty((n_boot, n_models))
        for b, draw in enumerate(_bootstrap_weights(score.shape[0], groups, n_boot, seed)):
            reps[b] = fit_strengths(*_tables(model_a, model_b, score, draw * weights, n_models), prior_games)[0]
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(reps, [tail, 100 - tail], axis=0)
    return BradleyTerry(strength, low, high, win_rate, games, iterations, converged)


def _bootstrap_weights(m: int, groups: np.ndarray | None, n_boot: int, seed: int):
    """``n_boot`` arrays of per-comparison multiplicities: comparisons drawn with replacement, or
    whole groups drawn with replacement (each comparison counted as often as its group)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        return
    groups = np.asarray(groups)
    if groups.shape != (m,):
        raise ValueError("groups must have one label per comparison")
    _, group_of = np.unique(groups, return_inverse=True)
    k = int(group_of.max()) + 1
    for _ in range(n_boot):
        times = np.bincount(rng.integers(0, k, k), minlength=k).astype(np.float64)
        yield times[group_of]


@dataclass(eq=False)
class WinRates:
    """Per model: mean score against the other models (tie = ½) and its bootstrap interval."""

    rate: np.ndarray  # [n_models] NaN: no games
    low: np.ndarray
    high: np.ndarray
    n_games: np.ndarray  # [n_models] (weighted) games played


def win_rates(
    model_a: np.ndarray,
    model_b: np.ndarray,
    outcome: np.ndarray,
    *,
    n_models: int | None = None,
    weights: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> WinRates:
    """Each model's weighted mean score over its games, with a percentile bootstrap interval
    over comparisons, or over ``groups`` (e.g. prompts) when given."""
    model_a = np.asarray(model_a, dtype=np.int64)
    model_b = np.asarray(model_b, dtype=np.int64)
    score = outcome_scores(outcome)
    if not (model_a.shape == model_b.shape == score.shape):
        raise ValueError("model_a, model_b and outcome must have the same length")
    n_models = (
        int(max(model_a.max(initial=-1), model_b.max(initial=-1)) + 1) if n_models is None else n_models
    )
    weights = np.ones(score.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)

    def rates(w):
        won = np.bincount(model_a, weights=w * score, minlength=n_models)
        won += np.bincount(model_b, weights=w * (1 - score), minlength=n_models)
        played = np.bincount(model_a, weights=w, minlength=n_models) + np.bincount(
            model_b, weights=w, minlength=n_models
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(played > 0, won / np.where(played > 0, played, 1), np.nan), played

    rate, played = rates(weights)
    low = high = np.full(n_models, np.nan)
    if n_boot > 0 and score.shape[0]:
        reps = np.array([rates(d * weights)[0] for d in _bootstrap_weights(score.shape[0], groups, n_boot, seed)])
        tail = (1 - level) / 2 * 100
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a model absent from every draw: NaN
            low, high = np.nanpercentile(reps, [tail, 100 - tail], axis=0)
    return WinRates(rate, low, high, played)
