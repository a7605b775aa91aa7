"""Active pair selection: which open comparisons to serve first (pure numpy).

A project whose ``pair_order`` is active serves open comparisons by a *priority* (higher first;
``training.active`` computes it with the functions here and writes it into
``Comparison.priority``). Every priority lies in [0, 1].

**Margin** (``margin_priority``). Under a DPO-trained policy π with reference π_ref, the implicit
reward of a response is r(x, y) = β·(log π(y|x) − log π_ref(y|x)), and the model's preference of A
over B is the Bradley–Terry probability σ(m) of the margin

    m = β·((log π(a|x) − log π_ref(a|x)) − (log π(b|x) − log π_ref(b|x))).

The priority is ``2·σ(−|m|)``: twice the probability the model gives to the outcome it does not
expect. It is 1 when the model cannot tell the two apart (m = 0), 1/2 at |m| = ln 3 (the model
says 3 : 1), and goes to 0 as the model grows sure. A human judgment of a small-margin pair is
the one whose outcome the model could not have predicted: the DPO gradient of that pair is
largest (its weight σ(−m) is near 1/2 either way), and it is the classic uncertainty-sampling
choice. Swapping A and B negates m and leaves the priority unchanged.

**Expected information** (``information_priority``). The margin asks only how unsure the model
is of a pair's outcome, not how much the vote would teach it: with noisy voters, the pairs a
trained model finds closest are mostly pairs that *are* close (their votes are near coin flips),
and a strict top-k of them fills a batch with one kind of pair. This order scores what a vote
would tell a Bayesian Bradley–Terry model on a representation of the pair, the classic
information-based objective of MacKay (1992, "Information-based objective functions for active
data selection"), as in active preference learning for RLHF (Mehta et al. 2023; Das et al. 2024,
"Active Preference Optimization"). With x the pair's feature difference φ(a) − φ(b), the model's
Fisher weight w = σ(m)·σ(−m) at its margin m, and the posterior precision of the judged pairs

    Λ = λ·I + Σ_judged w_j·x_j·x_jᵀ      (λ: the ``ridge`` in units of a typical undecided pair),

the expected information gain of one vote on pair i (Laplace approximation) is
½·log(1 + w_i·x_iᵀΛ⁻¹x_i): large when the model cannot call the pair (w near 1/4) *and* the pair
points in a direction the judged pairs have not yet pinned down (x_iᵀΛ⁻¹x_i large). The order is
greedy over a batch: the first pair has the largest gain, the next the largest gain given that
the first is judged (Λ += w·x·xᵀ, a rank-one update), and so on for the ``greedy`` first pairs,
so that one batch covers many directions (batch D-optimal design). Priorities: the greedy pairs
get (1/2, 1] by rank, every other pair its gain after them, scaled into [0, 1/2). Swapping A and
B negates x and m and leaves every priority unchanged.

**Pool disagreement** (``disagreement_priority``). Each pool's P(A) on a comparison, shrunk towards
1/2 by ``prior`` pseudo-votes (half for A, half for B), so that one vote is not a certainty:

    p_g = (A_g + T_g/2 + prior/2) / (n_g + prior)

(A_g votes for A, T_g ties and both-bad, n_g all votes of pool g). The priority is the spread
``max_g p_g − min_g p_g`` over the pools that voted on it: how far the pools disagree, in [0, 1).
A comparison fewer than two pools have voted on has no measurable disagreement; it gets the
``neutral`` value, by default the median of the measured ones, so it is served after the
comparisons on which pools clearly disagree and before those on which they agree.
"""

from __future__ import annotations

import numpy as np

#: Pseudo-votes (half for A, half for B) that shrink a pool's P(A) towards 1/2.
DEFAULT_PRIOR = 2.0


def implicit_margin(policy_a, reference_a, policy_b, reference_b, beta: float) -> np.ndarray:
    """β·((log π(a) − log π_ref(a)) − (log π(b) − log π_ref(b))), elementwise (sequence
    log-probabilities summed over each response's tokens)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    pa, ra, pb, rb = (np.asarray(v, dtype=np.float64) for v in (policy_a, reference_a, policy_b, reference_b))
    return beta * ((pa - ra) - (pb - rb))


def priority_from_margin(margin) -> np.ndarray:
    """``2·σ(−|m|)`` = 2 / (1 + e^|m|), in (0, 1]: 1 when the model cannot tell A from B."""
    m = np.abs(np.asarray(margin, dtype=np.float64))
    if not np.all(np.isfinite(m)):
        raise ValueError("margins must be finite")
    e = np.exp(-m)  # in (0, 1]: no overflow
    return 2.0 * e / (1.0 + e)


def margin_priority(policy_a, reference_a, policy_b, reference_b, beta: float) -> np.ndarray:
    """The margin priority of each comparison (see the module docstring)."""
    return priority_from_margin(implicit_margin(policy_a, reference_a, policy_b, reference_b, beta))


def pool_p_a(item, pool, label, n_items: int, n_pools: int, prior: float = DEFAULT_PRIOR):
    """``(p, n)``: each pool's shrunk P(A) per comparison (``[n_items, n_pools]``) and its vote
    counts. ``label``: 0 = A, 1 = B, 2 = tie or both bad (half a vote each way)."""
    if prior < 0:
        raise ValueError("prior must be >= 0")
    item = np.asarray(item, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    if not (item.shape == pool.shape == label.shape):
        raise ValueError("item, pool and label must have the same length")
    if item.size and (item.min() < 0 or item.max() >= n_items or pool.min() < 0 or pool.max() >= n_pools):
        raise ValueError("item and pool indices must lie in [0, n_items) and [0, n_pools)")
    if label.size and (label.min() < 0 or label.max() > 2):
        raise ValueError("label must be 0 (A), 1 (B) or 2 (tie)")
    key = item * n_pools + pool
    n = np.bincount(key, minlength=n_items * n_pools).astype(np.float64)
    a = np.bincount(key, weights=np.where(label == 0, 1.0, np.where(label == 2, 0.5, 0.0)),
                    minlength=n_items * n_pools)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (a + prior / 2) / (n + prior)
    return p.reshape(n_items, n_pools), n.reshape(n_items, n_pools)


def pool_spread(item, pool, label, n_items: int, n_pools: int, prior: float = DEFAULT_PRIOR):
    """``(spread, measured)``: per comparison, max − min of the pools' shrunk P(A) over the pools
    that voted on it, and whether at least two pools did (else the spread is 0 and means nothing)."""
    if n_items == 0 or n_pools == 0:
        return np.zeros(n_items), np.zeros(n_items, dtype=bool)
    p, n = pool_p_a(item, pool, label, n_items, n_pools, prior)
    voted = n > 0
    measured = voted.sum(axis=1) >= 2
    hi = np.where(voted, p, -np.inf).max(axis=1)
    lo = np.where(voted, p, np.inf).min(axis=1)
    return np.where(measured, hi - lo, 0.0), measured


def neutral_value(spread, measured) -> float:
    """The priority of a comparison with no measurable disagreement: the median of the measured
    ones (0 when none is measured)."""
    spread, measured = np.asarray(spread), np.asarray(measured, dtype=bool)
    return float(np.median(spread[measured])) if measured.any() else 0.0


def disagreement_priority(item, pool, label, n_items: int, n_pools: int, *, prior: float = DEFAULT_PRIOR,
                          neutral: float | None = None) -> np.ndarray:
    """The pool-disagreement priority of each of ``n_items`` comparisons from its votes (one
    entry per vote: comparison index, pool index, label; see the module docstring)."""
    spread, measured = pool_spread(item, pool, label, n_items, n_pools, prior)
    if neutral is None:
        neutral = neutral_value(spread, measured)
    return np.where(measured, spread, float(neutral))


# --------------------------------------------------------------------------- expected information

#: Pairs ordered by the greedy batch selection; the rest follow by their own gain.
DEFAULT_GREEDY = 500
#: Prior precision along every direction, in units of a typical undecided pair's information.
DEFAULT_RIDGE = 0.1


def fisher_weight(margin) -> np.ndarray:
    """σ(m)·σ(−m): the Fisher information of one Bradley–Terry vote at margin m (1/4 at m = 0)."""
    m = np.abs(np.asarray(margin, dtype=np.float64))
    if not np.all(np.isfinite(m)):
        raise ValueError("margins must be finite")
    e = np.exp(-m)
    return e / (1.0 + e) ** 2


def information_priority(x, w, x_judged=None, w_judged=None, *, ridge: float = DEFAULT_RIDGE,
                         greedy: int = DEFAULT_GREEDY) -> np.ndarray:
    """The expected-information priority of each open pair (see the module docstring).

    ``x``: ``[n, d]`` feature differences of the open pairs, ``w``: their Fisher weights
    (:func:`fisher_weight` of their margins); ``x_judged`` / ``w_judged``: the same for every
    vote so far (a pair judged k times appears k times, or with k·w). A row of zeros (a pair that
    could not be scored) gets priority 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("x must be [n, d]")
    n, d = x.shape
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("w must hold one finite weight >= 0 per row of x")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    if n == 0:
        return np.zeros(0)
    xj = np.zeros((0, d)) if x_judged is None else np.asarray(x_judged, dtype=np.float64).reshape(-1, d)
    wj = np.zeros(0) if w_judged is None else np.asarray(w_judged, dtype=np.float64)
    if wj.shape != (len(xj),) or np.any(wj < 0):
        raise ValueError("w_judged must hold one weight >= 0 per row of x_judged")
    norms = np.einsum("ij,ij->i", x, x)
    scale = float(norms[norms > 0].mean()) if np.any(norms > 0) else 1.0
    precision = ridge * 0.25 * scale * np.eye(d) + (xj * wj[:, None]).T @ xj
    # q_i = x_iᵀ Λ⁻¹ x_i through the Cholesky factor (no explicit inverse of Λ for the n rows)
    chol = np.linalg.cholesky(precision)
    q = np.empty(n)
    for start in range(0, n, 65536):  # in slices: L⁻¹xᵢ for every row at once would double the memory
        z = np.linalg.solve(chol, x[start:start + 65536].T)  # [d, rows]
        q[start:start + 65536] = np.einsum("ji,ji->i", z, z)
    cov = np.linalg.inv(precision)
    gain = w * q
    prio = np.zeros(n)
    left = (norms > 0) & (w > 0)
    k = min(int(greedy), int(left.sum()))
    for rank in range(k):
        i = int(np.argmax(np.where(left, gain, -1.0)))
        left[i] = False
        prio[i] = 1.0 - 0.5 * rank / k
        # Λ += w_i x_i x_iᵀ: Sherman–Morrison on Λ⁻¹ and on every q
        v = cov @ x[i]
        denom = 1.0 + w[i] * (x[i] @ v)
        xv = x @ v
        q -= w[i] * xv * xv / denom
        cov -= w[i] * np.outer(v, v) / denom
        gain = w * np.maximum(q, 0.0)
    if left.any():
        top = gain[left].max()
        if top > 0:
            prio[left] = 0.5 * gain[left] / top * (1 - 1e-9)
    return prio


# --------------------------------------------------------------------------- stochastic acquisition

def stable_uniform(seed: int, ids) -> np.ndarray:
    """A uniform number in (0, 1) per id, fixed by ``(seed, id)`` (splitmix64 of both), so that
    scoring the same comparisons again, in any chunks, gives the same numbers."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0xD1B54A32D192ED03)
        x = x * np.uint64(0x9E3779B97F4A7C15) + salt
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sampled_priority(priority, u, power: float) -> np.ndarray:
    """Stochastic acquisition: the key ``u^(1/w)`` with ``w = priority^power`` (Efraimidis &
    Spirakis 2006), so that serving by the key, highest first, draws the comparisons without
    replacement with probability ∝ ``priority^power`` -- the "power acquisition" of Kirsch et al.
    2023 (Stochastic Batch Acquisition, TMLR), in place of a strict top-k of the priority.
    ``power`` 0 is a uniformly random order; large ``power`` tends to the strict order. A
    priority of 0 keeps the key 0 (served last). Keys lie in [0, 1)."""
    if not power >= 0:
        raise ValueError(f"power must be >= 0, got {power!r}")
    w = np.asarray(priority, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    if w.shape != u.shape:
        raise ValueError("priority and u must have the same shape")
    if np.any(w < 0) or np.any(w > 1) or not np.all(np.isfinite(w)):
        raise ValueError("priorities must lie in [0, 1]")
    if np.any(u <= 0) or np.any(u >= 1):
        raise ValueError("u must lie in (0, 1)")
    out = np.zeros_like(w)
    pos = w > 0
    # log key = log(u) / w^power; exp of a value <= 0: no overflow
    out[pos] = np.exp(np.log(u[pos]) / np.power(w[pos], power))
    return out
