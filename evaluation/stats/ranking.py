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
(``elo = 400 / ln 10 * strength``). Confidence intervals resample comparisons (seeded).
"""

from __future__ import annotations

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
) -> BradleyTerry:
    """Strengths, percentile bootstrap intervals and the observed win-rate matrix."""
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
    m = score.shape[0]
    if n_boot > 0 and m:
        rng = np.random.default_rng(seed)
        reps = np.empty((n_boot, n_models))
        for b in range(n_boot):
            draw = np.bincount(rng.integers(0, m, m), minlength=m) * weights
            reps[b] = fit_strengths(*_tables(model_a, model_b, score, draw, n_models), prior_games)[0]
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(reps, [tail, 100 - tail], axis=0)
    return BradleyTerry(strength, low, high, win_rate, games, iterations, converged)
