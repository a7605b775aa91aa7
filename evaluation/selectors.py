"""Reads: judgments from the database into the arrays the pure statistics modules take.

The one streaming judgment loader (:func:`load_judgments`) behind both concerns of the app,
the quality statistics (:mod:`evaluation.quality`) and the calibrated exports
(:mod:`evaluation.export`), and the bridge from its table to :mod:`evaluation.stats`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from django.db.models.functions import Length

from annotate.models import Choice, Comparison, GoldAnswer, Judgment, Membership, Pool, Project

from .stats.judgments import Judgments

LABEL = {Choice.A: 0, Choice.B: 1, Choice.TIE: 2, Choice.BOTH_BAD: 2}
GOLD_LABEL = {Choice.A: 0, Choice.B: 1, Choice.TIE: 2, Choice.BOTH_BAD: 2}
#: Rows read from the database and turned into arrays per batch.
LOAD_CHUNK = 50_000
#: The name of the group of annotators without a pool.
NO_POOL = "(no pool)"


@dataclass
class JudgmentTable:
    """Judgments of one project as parallel arrays plus the maps back to database ids.

    ``item``/``worker`` index into ``comparison_ids``/``annotator_ids``; ``label`` is
    0 = A better, 1 = B better, 2 = tie or both bad (``both_bad`` tells which).
    ``a_left_known`` is False where the display order was not recorded (``Judgment.a_on_left``
    is NULL: imported votes without ``display``); ``a_left`` is then False and means nothing.
    """

    judgment_ids: np.ndarray
    item: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    both_bad: np.ndarray
    a_left: np.ndarray
    a_left_known: np.ndarray
    seconds: np.ndarray
    strength: np.ndarray
    pool_of_judgment: np.ndarray
    comparison_ids: np.ndarray
    annotator_ids: np.ndarray
    worker_pool: np.ndarray  # pool id of each worker (membership), -1 if none
    len_a: np.ndarray
    len_b: np.ndarray
    gold: np.ndarray  # per item: -1, or the gold label 0/1/2
    item_prompt: np.ndarray  # per item: the comparison's prompt id
    item_round: np.ndarray  # per item: the comparison's round

    @property
    def n_items(self) -> int:
        return len(self.comparison_ids)

    @property
    def n_workers(self) -> int:
        return len(self.annotator_ids)

    def __len__(self) -> int:
        return len(self.item)

    def to_judgments(self, pool: np.ndarray, *, a_left: bool = True) -> Judgments:
        """The pure modules' :class:`~evaluation.stats.judgments.Judgments`, with ``pool`` the
        dense pool index of each worker (display order unknown where ``a_left_known`` is
        false; none at all with ``a_left=False``)."""
        return Judgments(
            item=self.item,
            worker=self.worker,
            label=self.label,
            a_left=self.a_left if a_left else None,
            a_left_known=self.a_left_known if a_left else None,
            seconds=self.seconds,
            both_bad=self.both_bad,
            n_items=self.n_items,
            n_workers=self.n_workers,
            pool=pool,
            gold=self.gold,
            len_a=self.len_a.astype(np.float64),
            len_b=self.len_b.astype(np.float64),
        )


_COLUMNS = {
    "jid": np.int64,
    "cid": np.int64,
    "uid": np.int64,
    "label": np.int8,
    "both_bad": bool,
    "a_left": bool,
    "a_left_known": bool,
    "seconds": np.float64,
    "strength": np.int8,
    "pool": np.int64,
}


def load_judgments(
    project: Project,
    *,
    rounds: list[int] | None = None,
    pools: list[int] | None = None,
    include_excluded: bool = True,
) -> JudgmentTable:
    """The project's judgments (optionally only ``rounds`` / ``pools``, without excluded
    annotators) as a :class:`JudgmentTable`, in judgment id order.

    The one loader behind the quality statistics and the exports, built for size: judgment
    rows are read with ``iterator(chunk_size=…)`` and turned into numpy arrays
    :data:`LOAD_CHUNK` rows at a time, and the per-comparison facts (prompt, round, response
    lengths) come from one streamed scan. Peak memory is the arrays (about 61 bytes per
    judgment and 60 per comparison), never a Python list of every row or a model instance.
    """
    qs = Judgment.objects.filter(project=project)
    if rounds:
        qs = qs.filter(comparison__round__in=rounds)
    if pools:
        qs = qs.filter(pool_id__in=pools)
    if not include_excluded:
        excluded = Membership.objects.filter(project=project, excluded=True).values("user_id")
        qs = qs.exclude(annotator_id__in=excluded)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _COLUMNS}
    rows_iter = (
        qs.order_by("pk")
        .values_list(
            "pk", "comparison_id", "annotator_id", "choice", "a_on_left", "seconds", "strength", "pool_id"
        )
        .iterator(chunk_size=LOAD_CHUNK)
    )
    while rows := list(itertools.islice(rows_iter, LOAD_CHUNK)):
        n = len(rows)
        jid, cid, uid, choice, a_left, seconds, strength, pool = zip(*rows)
        del rows
        cols["jid"].append(np.fromiter(jid, dtype=np.int64, count=n))
        cols["cid"].append(np.fromiter(cid, dtype=np.int64, count=n))
        cols["uid"].append(np.fromiter(uid, dtype=np.int64, count=n))
        cols["label"].append(np.fromiter((LABEL[c] for c in choice), dtype=np.int8, count=n))
        cols["both_bad"].append(np.fromiter((c == Choice.BOTH_BAD for c in choice), dtype=bool, count=n))
        cols["a_left"].append(np.fromiter((bool(x) for x in a_left), dtype=bool, count=n))
        cols["a_left_known"].append(np.fromiter((x is not None for x in a_left), dtype=bool, count=n))
        cols["seconds"].append(
            np.fromiter((x if x is not None else np.nan for x in seconds), dtype=np.float64, count=n)
        )
        cols["strength"].append(np.fromiter((x or 0 for x in strength), dtype=np.int8, count=n))
        cols["pool"].append(np.fromiter((x or -1 for x in pool), dtype=np.int64, count=n))
    arr = {k: (np.concatenate(v) if v else np.zeros(0, dtype=_COLUMNS[k])) for k, v in cols.items()}
    del cols
    comparison_ids, item = np.unique(arr.pop("cid"), return_inverse=True)
    annotator_ids, worker = np.unique(arr.pop("uid"), return_inverse=True)
    member_pool = dict(Membership.objects.filter(project=project).values_list("user_id", "pool_id"))
    worker_pool = np.array([member_pool.get(int(u)) or -1 for u in annotator_ids], dtype=np.int64)

    # Per-comparison facts: one pk-ordered scan, matched to the judged comparisons.
    n_items = comparison_ids.shape[0]
    prompt = np.full(n_items, -1, dtype=np.int64)
    rnd = np.zeros(n_items, dtype=np.int64)
    len_a = np.zeros(n_items, dtype=np.int64)
    len_b = np.zeros(n_items, dtype=np.int64)
    cq = Comparison.objects.filter(project=project)
    if rounds:
        cq = cq.filter(round__in=rounds)
    it = (
        cq.order_by("pk")
        .annotate(la=Length("response_a__text"), lb=Length("response_b__text"))
        .values_list("pk", "prompt_id", "round", "la", "lb")
        .iterator(chunk_size=LOAD_CHUNK)
    )
    while n_items and (rows := list(itertools.islice(it, LOAD_CHUNK))):
        block = np.array(rows, dtype=np.int64)
        pos = np.minimum(np.searchsorted(comparison_ids, block[:, 0]), n_items - 1)
        hit = comparison_ids[pos] == block[:, 0]
        for target, col in ((prompt, 1), (rnd, 2), (len_a, 3), (len_b, 4)):
            target[pos[hit]] = block[hit, col]
    gold = np.full(n_items, -1, dtype=np.int8)
    for cid, answer in GoldAnswer.objects.filter(comparison__project=project).values_list(
        "comparison_id", "answer"
    ):
        pos = int(np.searchsorted(comparison_ids, cid))
        if pos < n_items and comparison_ids[pos] == cid:
            gold[pos] = GOLD_LABEL[answer]

    return JudgmentTable(
        judgment_ids=arr["jid"],
        item=item.astype(np.int64),
        worker=worker.astype(np.int64),
        label=arr["label"],
        both_bad=arr["both_bad"],
        a_left=arr["a_left"],
        a_left_known=arr["a_left_known"],
        seconds=arr["seconds"],
        strength=arr["strength"],
        pool_of_judgment=arr["pool"],
        comparison_ids=comparison_ids,
        annotator_ids=annotator_ids,
        worker_pool=worker_pool,
        len_a=len_a,
        len_b=len_b,
        gold=gold,
        item_prompt=prompt,
        item_round=rnd,
    )


def pool_groups(project: Project, table: JudgmentTable) -> tuple[np.ndarray, list[dict]]:
    """Dense pool index per worker of ``table`` (annotators without a pool share one group,
    ordered last) and per group ``{"id", "name", "n_annotators", "n_judgments"}``, by name."""
    names = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    pool_ids = sorted(
        {int(p) for p in table.worker_pool.tolist()}, key=lambda p: (p < 0, names.get(p, ""), p)
    )
    index_of = {p: i for i, p in enumerate(pool_ids)}
    pool_index = np.array([index_of[int(p)] for p in table.worker_pool], dtype=np.int64)
    info = []
    for p in pool_ids:
        workers = pool_index == index_of[p]
        info.append(
            {
                "id": p if p >= 0 else None,
                "name": names.get(p, NO_POOL) if p >= 0 else NO_POOL,
                "n_annotators": int(workers.sum()),
                "n_judgments": int(np.isin(table.worker, np.flatnonzero(workers)).sum()),
            }
        )
    return pool_index, info
