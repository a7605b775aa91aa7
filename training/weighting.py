"""How much a weighted training set leaves to learn from: the weight sum and Kish's effective sample
size. Pure Python (the web process checks launches with it and must not load torch).

The losses reduce as ``mean(w_i * l_i)`` (``training.losses``), so a pair of weight 0 teaches
nothing, and a set whose weight sits on a few pairs teaches about as much as those few pairs.
Kish's effective sample size says how many equally weighted pairs the set is worth::

    n_eff = (sum_i w_i)**2 / sum_i w_i**2

It equals ``n`` when all weights are equal (whatever their size), falls towards 1 as one pair
dominates, and is 0 when every weight is 0 (the set teaches nothing). Because it does not see the
weights' scale, the weight sum is reported beside it: weights that all sit near 0 are a small
learning rate, not a small data set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WeightStats:
    pairs: int
    weight_sum: float
    effective_size: float  # Kish: (sum w)^2 / sum w^2; 0 when every weight is 0
    weighted: bool  # False: the run ignores the weights (use_weights off), every pair counts 1

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def row_weight(row: dict) -> float:
    """A row's ``weight`` (1 when absent, as the trainer reads it)."""
    w = row.get("weight")
    if w is None:
        return 1.0
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {row.get('weight')!r}")
    return w


def effective_sample_size(weights: Iterable[float]) -> float:
    """Kish's ``(sum w)^2 / sum w^2`` (0 for no weights or all weights 0)."""
    total = squares = 0.0
    for w in weights:
        total += w
        squares += w * w
    return total * total / squares if squares > 0 else 0.0


def weight_stats(rows: list[dict], use_weights: bool = True) -> WeightStats:
    """The stats of ``rows`` as the trainer will weigh them (all 1 when ``use_weights`` is off)."""
    weights = [row_weight(r) for r in rows] if use_weights else [1.0] * len(rows)
    return WeightStats(len(rows), float(sum(weights)), effective_sample_size(weights), use_weights)
