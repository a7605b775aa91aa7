"""Synthetic judgments with known truth, for tests, benchmarks and demos (pure numpy).

:func:`simulate` draws annotators of known accuracy, position and length bias, judging items
of known label, so that an estimator can be checked against the truth it should recover.

Simulated annotators of texts (the unattended loop): :class:`PoolSpec` describes a pool
(accuracy range, position bias, length bias, tie rate, speed, how often an item is abandoned);
:func:`draw_annotators` makes its :class:`SimulatedAnnotator` s, each of whom
:meth:`~SimulatedAnnotator.judge` s two shown texts by a hidden utility of the texts
(:class:`KeywordUtility`: a lexicon score with a length penalty) in place of the truth.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

from .judgments import TIE, A, B, Judgments


@dataclass(eq=False)
class SimulationTruth:
    """What :func:`simulate` knows: true labels and each worker's behaviour."""

    label: np.ndarray  # [n_items]
    accuracy: np.ndarray  # [n_workers] P(correct) when judging the content
    left_bias: np.ndarray  # [n_workers] P(click left whatever the content)
    length_bias: np.ndarray  # [n_workers] P(click the longer response whatever the content)
    effective_accuracy: np.ndarray  # [n_workers] P(label == truth) overall


def _distinct_workers(rng: np.random.Generator, n_items: int, overlap: int, p: np.ndarray) -> np.ndarray:
    """``[n_items, overlap]`` workers, distinct within each row, drawn with probabilities ``p``."""
    n_workers = p.shape[0]
    if overlap > n_workers:
        raise ValueError("overlap cannot exceed the number of workers")
    cdf = np.cumsum(p)
    cdf[-1] = 1.0

    def draw(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_workers - 1)

    w = draw((n_items, overlap))
    for _ in range(1000):
        order = np.sort(w, axis=1)
        dup_rows = np.flatnonzero((order[:, 1:] == order[:, :-1]).any(axis=1))
        if dup_rows.size == 0:
            return w
        # Redraw the later copy of each duplicated worker in those rows.
        sub = w[dup_rows]
        srt = np.argsort(sub, axis=1, kind="stable")
        sorted_sub = np.take_along_axis(sub, srt, axis=1)
        is_dup = np.zeros_like(sub, dtype=bool)
        dup_sorted = np.zeros_like(sub, dtype=bool)
        dup_sorted[:, 1:] = sorted_sub[:, 1:] == sorted_sub[:, :-1]
        np.put_along_axis(is_dup, srt, dup_sorted, axis=1)
        sub[is_dup] = draw(int(is_dup.sum()))
        w[dup_rows] = sub
    raise RuntimeError("could not draw distinct workers; lower the activity skew")


def simulate(
    n_workers: int = 50,
    n_items: int = 2000,
    overlap: int = 5,
    *,
    accuracy: np.ndarray | tuple[float, float] = (0.55, 0.95),
    left_bias: np.ndarray | None = None,
    length_bias: np.ndarray | None = None,
    tie_rate: float = 0.0,
    gold_fraction: float = 0.0,
    n_pools: int = 1,
    activity_sigma: float = 0.0,
    seed: int = 0,
) -> tuple[Judgments, SimulationTruth]:
    """Synthetic judgments with known truth (tests, benchmarks, demos).

    Each item gets ``overlap`` distinct workers (chosen with log-normal activity if
    ``activity_sigma > 0``); A is shown on the left with probability 1/2. A worker clicks left
    with probability ``left_bias``, else the longer response with probability ``length_bias``,
    else judges the content: correct with probability ``accuracy``, otherwise one of the other
    classes at random (only the other side when ``tie_rate == 0``).
    """
    rng = np.random.default_rng(seed)
    if isinstance(accuracy, tuple):
        accuracy = rng.uniform(accuracy[0], accuracy[1], n_workers)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    left_bias = np.zeros(n_workers) if left_bias is None else np.asarray(left_bias, dtype=np.float64)
    length_bias = np.zeros(n_workers) if length_bias is None else np.asarray(length_bias, dtype=np.float64)

    truth = np.where(rng.random(n_items) < 0.5, A, B)
    if tie_rate > 0:
        truth = np.where(rng.random(n_items) < tie_rate, TIE, truth)
    len_a = np.round(np.exp(rng.normal(6.0, 0.7, n_items))) + 1
    len_b = np.round(np.exp(rng.normal(6.0, 0.7, n_items))) + 1
    activity = (
        np.exp(rng.normal(0.0, activity_sigma, n_workers)) if activity_sigma > 0 else np.ones(n_workers)
    )
    workers = _distinct_workers(rng, n_items, overlap, activity / activity.sum())

    item = np.repeat(np.arange(n_items), overlap)
    worker = workers.ravel()
    n = item.shape[0]
    a_left = rng.random(n) < 0.5
    t = truth[item]
    # Content judgment: right with P(accuracy), else another class uniformly.
    right = rng.random(n) < accuracy[worker]
    if tie_rate > 0:
        wrong = (t + rng.integers(1, 3, n)) % 3
    else:
        wrong = 1 - t
    content = np.where(right, t, wrong)
    longer = np.where(len_a[item] >= len_b[item], A, B)
    left = np.where(a_left, A, B)
    u = rng.random(n)
    lb, nb = left_bias[worker], length_bias[worker]
    label = np.where(u < lb, left, np.where(u < lb + nb, longer, content))

    seconds_median = np.exp(rng.normal(np.log(20.0), 0.4, n_workers))
    seconds = seconds_median[worker] * np.exp(rng.normal(0.0, 0.5, n))
    gold = np.full(n_items, -1, dtype=np.int8)
    if gold_fraction > 0:
        is_gold = rng.random(n_items) < gold_fraction
        gold[is_gold] = truth[is_gold]
    pool = rng.integers(0, n_pools, n_workers) if n_pools > 1 else np.zeros(n_workers, dtype=np.int64)

    p_tie = tie_rate
    # A position or length click is right when the clicked side is the better one (1/2 of the
    # non-tie items, independent of the click), never on a tie.
    effective = (1 - left_bias - length_bias) * accuracy + (left_bias + length_bias) * 0.5 * (1 - p_tie)
    j = Judgments(
        item=item,
        worker=worker,
        label=label,
        a_left=a_left,
        seconds=seconds,
        n_items=n_items,
        n_workers=n_workers,
        pool=pool,
        gold=gold,
        len_a=len_a,
        len_b=len_b,
    )
    return j, SimulationTruth(truth, accuracy, left_bias, length_bias, effective)


# --------------------------------------------------------------------------- annotators of texts

#: The default hidden utility's lexicon: words a good response uses and words a bad one uses.
GOOD_WORDS = frozenset(
    "sure glad happy help helpful kind clear safe thanks thank please great good gentle calm bright".split()
)
BAD_WORDS = frozenset("no never hate stupid bad wrong ugly angry useless awful".split())
_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class KeywordUtility:
    """The hidden utility of a response: ``good - bad - length_penalty * max(0, words - free_words)
    - unknown_penalty * unknown``, where ``good``/``bad`` count the words of the text (lower-cased)
    found in each lexicon and, when a ``known`` vocabulary is given, ``unknown`` counts the words
    in neither lexicon nor in it (gibberish costs).

    The annotators never see it; they judge by it (with their noise and biases), and the loop's
    report measures each round's samples with it.
    """

    good: frozenset = GOOD_WORDS
    bad: frozenset = BAD_WORDS
    length_penalty: float = 0.05
    free_words: int = 12
    known: frozenset = frozenset()
    unknown_penalty: float = 0.0

    def __call__(self, text: str) -> float:
        words = _WORD.findall((text or "").lower())
        good = sum(w in self.good for w in words)
        bad = sum(w in self.bad for w in words)
        value = good - bad - self.length_penalty * max(0, len(words) - self.free_words)
        if self.known and self.unknown_penalty:
            value -= self.unknown_penalty * sum(
                w not in self.known and w not in self.good and w not in self.bad for w in words
            )
        return float(value)


@dataclass(frozen=True)
class PoolSpec:
    """A pool of simulated annotators.

    ``accuracy``: each annotator's P(picking the higher-utility response when judging the
    content) is drawn uniformly from this range. ``left_bias``: P(clicking left whatever the
    content); ``length_bias``: P(clicking the longer response whatever the content);
    ``tie_rate``: P(answering tie when judging the content, or when both utilities are equal).
    ``seconds``: median seconds per judgment (log-normal around it). ``abandon_rate``: P(an
    item is left unanswered until its assignment expires).
    """

    name: str
    n_annotators: int = 3
    accuracy: tuple[float, float] = (0.75, 0.95)
    left_bias: float = 0.0
    length_bias: float = 0.0
    tie_rate: float = 0.0
    seconds: float = 20.0
    abandon_rate: float = 0.0

    def __post_init__(self):
        lo, hi = self.accuracy
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"pool {self.name!r}: accuracy must be a range inside [0, 1], got {self.accuracy}")
        for name in ("left_bias", "length_bias", "tie_rate", "abandon_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pool {self.name!r}: {name} must lie in [0, 1]")
        if self.left_bias + self.length_bias > 1.0:
            raise ValueError(f"pool {self.name!r}: left_bias + length_bias must be at most 1")
        if self.n_annotators < 1 or self.seconds <= 0:
            raise ValueError(f"pool {self.name!r}: needs at least one annotator and positive seconds")

    @classmethod
    def from_dict(cls, data: dict) -> PoolSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown pool field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if "accuracy" in data:
            acc = data["accuracy"]
            data["accuracy"] = (float(acc), float(acc)) if isinstance(acc, (int, float)) else tuple(acc)
        return cls(**data)


@dataclass(frozen=True)
class Decision:
    """A simulated judgment in displayed terms (what the annotator page would send)."""

    choice: str  # "left" | "right" | "tie"
    strength: int | None
    seconds: float
    reason: str  # "left" | "longer" | "content" | "tie" (why this click: the truth of the simulation)


@dataclass(frozen=True)
class SimulatedAnnotator:
    """One simulated person: their pool and their true behaviour."""

    pool: str
    index: int
    accuracy: float
    left_bias: float
    length_bias: float
    tie_rate: float
    seconds: float
    abandon_rate: float
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.pool}-{self.index}"

    @property
    def expected_position_bias(self) -> float:
        """P(clicking left) − ½ that this behaviour produces (what the dashboard estimates)."""
        return self.left_bias / 2

    def judge(self, left: str, right: str, utility, rng: np.random.Generator) -> Decision:
        """Choose between the shown texts: left click with P(left_bias), the longer with
        P(length_bias), else by content: a tie with P(tie_rate) (always when the utilities are
        equal and ties are this annotator's habit), else the higher-utility side with
        P(accuracy)."""
        seconds = float(self.seconds * math.exp(rng.normal(0.0, 0.4)))
        u = rng.random()
        if u < self.left_bias:
            return Decision("left", 1, seconds, "left")
        if u < self.left_bias + self.length_bias:
            side = "left" if len(left) >= len(right) else "right"
            return Decision(side, 1, seconds, "longer")
        if rng.random() < self.tie_rate:
            return Decision("tie", None, seconds, "tie")
        ul, ur = utility(left), utility(right)
        if ul == ur:
            return Decision("left" if rng.random() < 0.5 else "right", 1, seconds, "content")
        better, worse = ("left", "right") if ul > ur else ("right", "left")
        gap = abs(ul - ur)
        strength = 3 if gap >= 3 else 2 if gap >= 1 else 1
        if rng.random() < self.accuracy:
            return Decision(better, strength, seconds, "content")
        return Decision(worse, 1, seconds, "content")


def _stable_seed(*parts) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def draw_annotators(pools: list[PoolSpec], seed: int = 0) -> list[SimulatedAnnotator]:
    """Every pool's annotators with their drawn accuracies; the same pools and seed give the
    same people (an annotator's draw depends only on the seed, the pool's name and their index)."""
    people = []
    for spec in pools:
        for k in range(spec.n_annotators):
            rng = np.random.default_rng(_stable_seed(seed, spec.name, k))
            lo, hi = spec.accuracy
            people.append(
                SimulatedAnnotator(
                    pool=spec.name,
                    index=k,
                    accuracy=float(rng.uniform(lo, hi)) if hi > lo else float(lo),
                    left_bias=spec.left_bias,
                    length_bias=spec.length_bias,
                    tie_rate=spec.tie_rate,
                    seconds=float(spec.seconds * math.exp(rng.normal(0.0, 0.2))),
                    abandon_rate=spec.abandon_rate,
                    seed=_stable_seed(seed, spec.name, k, "judge"),
                )
            )
    return people


#: Pools of the unattended loop when none are given: a careful pool, a left-clicking pool and a
#: pool that likes long answers.
DEFAULT_POOLS = (
    PoolSpec("careful", n_annotators=3, accuracy=(0.85, 0.95), seconds=25.0),
    PoolSpec("hasty", n_annotators=2, accuracy=(0.65, 0.8), left_bias=0.3, seconds=8.0, abandon_rate=0.05),
    PoolSpec("verbose", n_annotators=2, accuracy=(0.75, 0.9), length_bias=0.3, tie_rate=0.05, seconds=15.0),
)
