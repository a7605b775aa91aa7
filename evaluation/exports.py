"""Calibrated preference exports: options, selection, streaming writers, dataset card, hash.

One service behind the export UI (``export_views``), the REST API (``export_api``), the
Celery task (``export_tasks.build_export_task``) and ``manage.py export_preferences``.

How an export is built (:func:`build_export`)
    1. **Select.** The judgments of the project that pass the filters (rounds, pools, excluded
       annotators) are loaded as numpy arrays (:func:`evaluation.selectors.load_judgments`,
       the streaming loader the quality statistics use too) and aggregated per comparison
       with the chosen method (:mod:`evaluation.aggregation`).
       Comparisons below ``min_confidence`` and (unless asked for) ties / both-bad are dropped.
       A filter that leaves nothing raises :class:`ExportError` naming that filter, before any
       file is written.
    2. **Split by prompt.** Every prompt gets a seeded 64-bit hash; the ``test_fraction`` of the
       selected pairs' prompts with the smallest hashes form the test split (at least one prompt
       when there are two or more). A prompt's comparisons are therefore all on one side.
    3. **Stream.** The texts are never held in memory: selected comparison ids are read back in
       chunks of :data:`CHUNK` rows (a ``pk`` range scan, :func:`rows_by_id`) and each chunk is written to
       every requested format at once (JSONL line by line, Parquet with ``ParquetWriter``, CSV,
       and two Arrow IPC streams that become the ``datasets`` folder). Memory is the judgment
       arrays (a few numbers per judgment) plus one chunk of texts.
    4. **Card, hash, metadata.** ``README.md`` (the dataset card) is generated from the data;
       the content hash is SHA-256 over every file except ``metadata.json``, in sorted path
       order (:func:`folder_hash`); ``metadata.json`` records it next to the options and counts.
       The folder is built under a temporary name and renamed into place, the files are made
       read-only, and a built export is never rebuilt: it is immutable.

The weight rule (:data:`WEIGHT_RULE`)
    Annotator weights ``w_j`` are the effective weights of docs/quality.md
    (``evaluation.services.effective_weight``): 0 for an excluded annotator, else an admin's
    override, else the computed weight of :func:`evaluation.bias.annotator_weights` (gold or
    Dawid–Skene accuracy scaled to [0, 1], times position-bias, length-bias and speed
    factors). The computed weights are the quality dashboard's stored ones
    (``AnnotatorQuality.weight``) when the project has them, else computed with the same
    function on the exported judgments. Then, per pair::

        p_chosen = P(chosen better)  from the aggregation (majority: votes weighted by w_j)
        support  = sum_j w_j / n_judgments          mean annotator weight on the pair, in [0, 1]
        weight   = p_chosen * support               (ties: p_tie * support)

    So a pair that three reliable annotators agree on weighs about 1, a pair decided by a
    coin-flip posterior or by down-weighted annotators weighs less.

Pseudonyms
    Annotators appear only as ``ann-`` + 16 hex digits of ``HMAC-SHA256(key, user id)``. The key
    is a random per-export secret (``Export.salt``, never written to a file or an API), so the
    same person has different pseudonyms in two exports; with ``stable_pseudonyms`` the key
    is derived from ``SECRET_KEY`` and the project id, so pseudonyms match across that
    project's exports (until the secret key changes).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Comparison, Judgment, Membership, Pool, Project, Prompt

from . import aggregation as agg
from .models import AnnotatorQuality, Export, ExportFormat, JobStatus
from .selectors import JudgmentTable, load_judgments

# --------------------------------------------------------------------------- constants

FORMATS = tuple(ExportFormat.values)  # jsonl, parquet, hf, csv, judgments
DEFAULT_FORMATS = ["jsonl", "parquet", "hf"]
METHODS = agg.METHODS
STYLES = ("auto", "standard", "conversational")
#: The file (or folder) each format writes, relative to the export folder.
FORMAT_FILES = {
    "jsonl": "preferences.jsonl",
    "parquet": "preferences.parquet",
    "csv": "preferences.csv",
    "judgments": "judgments.jsonl",
    "hf": "hf",
}
CARD_FILE = "README.md"
METADATA_FILE = "metadata.json"
#: Rows of texts fetched and written per batch.
CHUNK = 2000
#: A temporary build folder untouched this long belongs to a killed worker and is removed.
STALE_BUILD_S = 6 * 3600
PSEUDONYM_PREFIX = "ann-"

WEIGHT_RULE = """\
w_j      = annotator j's effective weight (docs/quality.md; evaluation.services.effective_weight):
           0 if an admin excluded them, else the admin's override, else the computed weight
           clip(2*accuracy - 1, 0, 1) * position * length * speed  (evaluation.bias.annotator_weights)
p_chosen = P(chosen better) from the aggregation method (majority: votes weighted by w_j)
support  = mean of w_j over the pair's judgments (in [0, 1])
weight   = p_chosen * support          (tie / both-bad rows: p_tie * support)"""

#: Every column of the pairwise files (JSONL, Parquet, CSV, datasets), documented once.
PAIR_FIELDS: dict[str, str] = {
    "prompt": "The prompt: a string, or a list of {role, content} messages (conversational format).",
    "chosen": "The preferred response: a string, or [{role: assistant, content}] (conversational).",
    "rejected": "The other response, in the same shape as `chosen`.",
    "label": "`preference` for a decided pair; `tie` or `both_bad` for an included tie "
    "(then chosen = response A).",
    "weight": "Training weight in [0, 1]: p_chosen x mean annotator weight on the pair "
    "(see the weight rule).",
    "confidence": "The aggregation's largest posterior probability on this comparison "
    "(what min_confidence filters).",
    "p_chosen": "P(chosen better than rejected) from the aggregation; 0.5 on tie rows.",
    "p_rejected": "P(rejected better) from the aggregation; 0.5 on tie rows.",
    "p_tie": "P(tie or both bad) from the aggregation.",
    "n_judgments": "Number of human judgments aggregated on this comparison.",
    "agreement": "Share of those judgments that agree with the aggregated label.",
    "pool_disagreement": "Largest total-variation distance between two pools' vote shares "
    "(null with < 2 pools).",
    "comparison_id": "prefloop's comparison id (joins with judgments.jsonl).",
    "prompt_id": "prefloop's prompt id (the unit of the train/test split).",
    "round": "The annotation round of the comparison.",
    "model_chosen": "Model that wrote the chosen response.",
    "model_rejected": "Model that wrote the rejected response.",
    "chosen_response": "Which response of the comparison was chosen: `a` or `b`.",
    "gold": "True for calibration comparisons with a known answer (their label is the gold answer).",
    "split": "`train` or `test` (by prompt: no prompt is on both sides).",
}

JUDGMENT_FIELDS: dict[str, str] = {
    "annotator": "Pseudonymous annotator id, stable within this export only (unless stable_pseudonyms).",
    "pool": "Name of the annotator pool the judgment was made in (null if none).",
    "comparison_id": "The comparison judged (joins with the pairwise files).",
    "prompt_id": "The comparison's prompt.",
    "round": "The comparison's annotation round.",
    "split": "The split of the comparison's prompt.",
    "display_order": "`AB` if response A was shown on the left, `BA` if on the right; null if the "
    "display order was not recorded (imported votes).",
    "choice": "What the annotator chose, in terms of the responses: `a`, `b`, `tie` or `both_bad`.",
    "choice_shown": "The same in screen terms: `left`, `right`, `tie` or `both_bad` (null for an "
    "`a`/`b` choice whose display order was not recorded).",
    "strength": "1 slightly, 2 clearly, 3 much better (null for ties or when not asked).",
    "seconds": "Seconds the annotator spent on the item (null if unknown).",
    "annotator_weight": "The annotator's weight w_j used by this export (see the weight rule).",
    "rationale": "The annotator's free-text rationale (only when include_rationales is on).",
}


class ExportError(ValueError):
    """Options or data that cannot make an export; the message says which and why.

    ``field`` names the option at fault (``"rounds"``, ``"min_confidence"``…) when there is
    one: the message's ``"<option>: "`` prefix, or given explicitly.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        head = message.split(":", 1)[0]
        self.field = field or (head if ":" in message and head.isidentifier() else None)


# --------------------------------------------------------------------------- options


@dataclass
class ExportOptions:
    """What an export contains. Stored (as a dict) in ``Export.params``; see :func:`clean_options`."""

    rounds: list[int] = field(default_factory=list)  # empty = all rounds
    pools: list[int] = field(default_factory=list)  # pool ids; empty = all pools
    method: str = "dawid_skene"
    pool_balanced: bool = False
    min_confidence: float = 0.0
    include_ties: bool = False
    include_both_bad: bool = False
    include_rationales: bool = False
    include_excluded: bool = False
    include_gold: bool = False
    test_fraction: float = 0.1
    seed: int = 0
    stable_pseudonyms: bool = False
    style: str = "auto"
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))

    @property
    def include_judgments(self) -> bool:
        return "judgments" in self.formats

    def to_params(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict) -> ExportOptions:
        known = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
        "",
    }:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise ExportError(f"{name}: expected true or false, got {value!r}")


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def clean_options(project: Project, data: dict | ExportOptions | None = None) -> ExportOptions:
    """Validate raw options (form, API or command values) into :class:`ExportOptions`.

    ``pools`` may be ids or names of the project's pools; ``formats`` a list or a comma
    separated string; ``include_judgments: true`` adds the ``judgments`` format (false adds
    nothing). Raises
    :class:`ExportError` naming the bad field.
    """
    if isinstance(data, ExportOptions):
        data = data.to_params()
    data = dict(data or {})
    unknown = set(data) - set(ExportOptions.__dataclass_fields__) - {"include_judgments", "name"}
    if unknown:
        raise ExportError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = ExportOptions()

    rounds = []
    for r in _as_list(data.get("rounds")):
        try:
            value = int(r)
        except (TypeError, ValueError):
            raise ExportError(f"rounds: {r!r} is not a round number") from None
        if value < 0:
            raise ExportError(f"rounds: {value} is negative")
        rounds.append(value)
    opts.rounds = sorted(set(rounds))

    pools = []
    project_pools = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    by_name = {name: pk for pk, name in project_pools.items()}
    for p in _as_list(data.get("pools")):
        if isinstance(p, Pool):
            p = p.pk
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit() and int(p) in project_pools):
            if int(p) not in project_pools:
                raise ExportError(f"pools: pool {p} is not in project {project.name!r}")
            pools.append(int(p))
        elif isinstance(p, str) and p in by_name:
            pools.append(by_name[p])
        else:
            known = ", ".join(sorted(by_name)) or "none"
            raise ExportError(f"pools: no pool {p!r} in project {project.name!r} (pools: {known})")
    opts.pools = sorted(set(pools))

    method = data.get("method") or opts.method
    if method not in METHODS:
        raise ExportError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    opts.method = method

    try:
        opts.min_confidence = float(
            data.get("min_confidence") if data.get("min_confidence") not in (None, "") else 0.0
        )
    except (TypeError, ValueError):
        raise ExportError(f"min_confidence: {data.get('min_confidence')!r} is not a number") from None
    if not (0.0 <= opts.min_confidence <= 1.0):
        raise ExportError(f"min_confidence: {opts.min_confidence} is not between 0 and 1")

    try:
        tf = data.get("test_fraction")
        opts.test_fraction = float(tf) if tf not in (None, "") else 0.1
    except (TypeError, ValueError):
        raise ExportError(f"test_fraction: {data.get('test_fraction')!r} is not a number") from None
    if not (0.0 <= opts.test_fraction < 1.0):
        raise ExportError(f"test_fraction: {opts.test_fraction} must be in [0, 1)")

    try:
        seed = data.get("seed")
        opts.seed = int(seed) if seed not in (None, "") else 0
    except (TypeError, ValueError):
        raise ExportError(f"seed: {data.get('seed')!r} is not an integer") from None
    if not (0 <= opts.seed < 2**63):
        raise ExportError("seed: must be a non-negative 63-bit integer")

    for name in (
        "pool_balanced",
        "include_ties",
        "include_both_bad",
        "include_rationales",
        "include_excluded",
        "include_gold",
        "stable_pseudonyms",
    ):
        if name in data and data[name] is not None:
            setattr(opts, name, _as_bool(name, data[name]))

    style = data.get("style") or "auto"
    if style not in STYLES:
        raise ExportError(f"style: {style!r} is not one of {', '.join(STYLES)}")
    opts.style = style

    formats = list(DEFAULT_FORMATS) if data.get("formats") in (None, "") else _as_list(data["formats"])
    for f in formats:
        if f not in FORMATS:
            raise ExportError(f"formats: {f!r} is not one of {', '.join(FORMATS)}")
    if data.get("include_judgments") is not None and _as_bool("include_judgments", data["include_judgments"]):
        formats.append("judgments")  # the same as listing the "judgments" format
    opts.formats = [f for f in FORMATS if f in set(formats)]  # fixed order, no duplicates
    if not opts.formats:
        raise ExportError("formats: choose at least one format")
    if opts.include_rationales and not opts.include_judgments:
        raise ExportError(
            "include_rationales: rationales are written to the judgments file; add the judgments format"
        )
    return opts


# --------------------------------------------------------------------------- pre-check


def _describe_filters(opts: ExportOptions, pool_names: dict[int, str]) -> str:
    parts = []
    if opts.rounds:
        parts.append(f"rounds={opts.rounds}")
    if opts.pools:
        parts.append(f"pools={[pool_names.get(p, p) for p in opts.pools]}")
    return ", ".join(parts) or "no filters"


def precheck(project: Project, opts: ExportOptions) -> None:
    """Cheap database checks that the rounds / pools / exclusion filters leave judgments.

    Raises :class:`ExportError` ``"no comparisons match: …"`` naming the filter that empties
    the selection. (``min_confidence`` and the tie options need the aggregation: the build
    checks them.)
    """
    comparisons = Comparison.objects.filter(project=project)
    if not comparisons.exists():
        raise ExportError(f"no comparisons match: project {project.name!r} has no comparisons")
    if opts.rounds:
        comparisons = comparisons.filter(round__in=opts.rounds)
        if not comparisons.exists():
            have = sorted(
                set(Comparison.objects.filter(project=project).values_list("round", flat=True).distinct())
            )
            raise ExportError(
                f"no comparisons match: rounds={opts.rounds} "
                f"(the project's comparisons are in rounds {have})",
                field="rounds",
            )
    judgments = Judgment.objects.filter(project=project)
    if opts.rounds:
        judgments = judgments.filter(comparison__round__in=opts.rounds)
    where = f"in rounds {opts.rounds}" if opts.rounds else "in the project"
    if not judgments.exists():
        raise ExportError(
            f"no comparisons match: no comparison {where} has a judgment yet",
            field="rounds" if opts.rounds else None,
        )
    if opts.pools:
        judgments = judgments.filter(pool_id__in=opts.pools)
        if not judgments.exists():
            names = list(Pool.objects.filter(pk__in=opts.pools).values_list("name", flat=True))
            raise ExportError(
                f"no comparisons match: pools={names} have no judgments on the comparisons {where}",
                field="pools",
            )
    if not opts.include_excluded:
        excluded = Membership.objects.filter(project=project, excluded=True).values("user_id")
        if not judgments.exclude(annotator_id__in=excluded).exists():
            raise ExportError(
                "no comparisons match: every remaining judgment is by an excluded annotator "
                "(include_excluded is off)",
                field="include_excluded",
            )


# --------------------------------------------------------------------------- create


def create_export(
    project: Project,
    user=None,
    data: dict | ExportOptions | None = None,
    *,
    name: str = "",
    enqueue: bool = True,
) -> Export:
    """Validate the options, check the filters leave data, create the queued ``Export`` row
    and (``enqueue``) send the build task once the transaction commits.

    Raises :class:`ExportError` (nothing is created) for bad options or empty filters.
    """
    opts = clean_options(project, data)
    if opts.include_gold and user is not None:
        from annotate.models import Role
        from annotate.roles import role_of

        if role_of(user, project) != Role.ADMIN:
            raise ExportError("include_gold: only project admins may export the answers of gold comparisons")
    precheck(project, opts)
    if not name and isinstance(data, dict):
        name = str(data.get("name") or "")
    export = Export.objects.create(
        project=project,
        created_by=user if (user is not None and getattr(user, "is_authenticated", False)) else None,
        name=name[:200],
        params=opts.to_params(),
        status=JobStatus.QUEUED,
        salt=secrets.token_hex(32),
    )
    if enqueue:
        enqueue_build(export)
    return export


def enqueue_build(export: Export) -> None:
    """Send the build task after the current transaction commits."""
    from .export_tasks import build_export_task

    export_id = export.pk
    transaction.on_commit(lambda: build_export_task.delay(export_id))


def mark_failed(export: Export | int, reason: str) -> None:
    export_id = export.pk if isinstance(export, Export) else int(export)
    Export.objects.filter(pk=export_id).exclude(status=JobStatus.SUCCEEDED).update(
        status=JobStatus.FAILED, error=str(reason)[:4000], step="failed", finished_at=timezone.now()
    )


# --------------------------------------------------------------------------- annotator weights


def _effective_weight_fn():
    """The quality dashboard's ``effective_weight(membership, quality)``; the same rule inline
    when that module is not there (0 if excluded, else the admin's override, else the
    computed weight, else 1)."""
    try:
        from .services import effective_weight

        return effective_weight
    except ImportError:  # pragma: no cover - evaluation.services ships with the app

        def effective_weight(membership, quality) -> float:
            if membership is not None and membership.excluded:
                return 0.0
            if membership is not None and membership.weight_override is not None:
                return membership.weight_override
            return quality.weight if quality is not None else 1.0

        return effective_weight


@dataclass
class _Computed:
    """Stands in for an ``AnnotatorQuality`` row: just the computed weight."""

    weight: float


def annotator_weight_vector(
    project: Project, table: JudgmentTable, j: agg.Judgments, ds_accuracy: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """``w_j`` per worker of ``table`` and a sentence saying where the weights came from.

    Always ``effective_weight(membership, quality)`` of the quality dashboard (exclusion → 0,
    an admin's override replaces the computed weight). The computed weight is the dashboard's
    stored one (``AnnotatorQuality.weight``, from its last report) when the project has
    stored rows; otherwise :func:`evaluation.bias.annotator_weights` on these judgments.
    """
    ids = [int(u) for u in table.annotator_ids]
    members = {m.user_id: m for m in Membership.objects.filter(project=project, user_id__in=ids)}
    quality = {
        q.annotator_id: q for q in AnnotatorQuality.objects.filter(project=project, annotator_id__in=ids)
    }
    effective_weight = _effective_weight_fn()
    if quality:
        when = max(q.computed_at for q in quality.values())
        rows = [quality.get(u) for u in ids]
        source = (
            f"the quality dashboard's stored annotator weights (computed {when:%Y-%m-%d %H:%M} UTC; "
            "evaluation.bias.annotator_weights), with admin exclusions and overrides"
        )
    else:
        from .bias import annotator_weights

        computed = np.nan_to_num(annotator_weights(j, ds_accuracy=ds_accuracy).weight, nan=0.0)
        rows = [_Computed(float(w)) for w in computed]
        source = (
            "evaluation.bias.annotator_weights computed on this export's judgments (Dawid–Skene accuracy "
            "where gold is scarce), with admin exclusions and overrides"
        )
    w = np.array(
        [_safe_weight(effective_weight(members.get(u), row)) for u, row in zip(ids, rows)], dtype=np.float64
    )
    return w, source


def _safe_weight(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 1.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


# --------------------------------------------------------------------------- selection


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a fixed, platform-independent 64-bit hash of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def prompt_hash(prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        key = np.asarray(prompt_ids, dtype=np.uint64) + _mix64(np.array([seed], dtype=np.uint64))[0]
    return _mix64(key)


def split_prompts(
    selected_prompts: np.ndarray, all_prompts: np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean "is test" for ``all_prompts``.

    The ``test_fraction`` of the distinct ``selected_prompts`` (rounded, at least one when
    there are two or more and the fraction is positive) with the smallest seeded hashes are
    test; any other prompt is test when its hash is below the largest of those. So the split
    is a function of the prompt: no prompt is on both sides.
    """
    if test_fraction <= 0 or all_prompts.size == 0:
        return np.zeros(all_prompts.shape[0], dtype=bool)
    distinct = np.unique(selected_prompts)
    n_test = int(round(test_fraction * distinct.size))
    if distinct.size >= 2:
        n_test = min(max(n_test, 1), distinct.size - 1)
    else:
        n_test = 0
    if n_test == 0:
        return np.zeros(all_prompts.shape[0], dtype=bool)
    threshold = np.sort(prompt_hash(distinct, seed))[n_test - 1]
    return prompt_hash(all_prompts, seed) <= threshold


@dataclass(eq=False)
class Selection:
    """Everything the writers and the card need, as arrays over the aggregated items."""

    project: Project
    opts: ExportOptions
    table: JudgmentTable
    judgments: agg.Judgments
    result: agg.Aggregate
    worker_weight: np.ndarray
    weights_source: str
    pool_ids: np.ndarray  # dense pool index -> pool id (-1 = none)
    pool_names: dict[int, str]  # pool id -> name
    item_prompt: np.ndarray
    item_round: np.ndarray
    item_test: np.ndarray
    label: np.ndarray  # 0 A, 1 B, 2 tie
    item_both_bad: np.ndarray
    confidence: np.ndarray
    agreement: np.ndarray
    support: np.ndarray
    pool_disagreement: np.ndarray
    selected: np.ndarray  # sorted item indices of the exported pairs
    conversational: bool
    chat_prompts: np.ndarray  # sorted prompt ids whose Prompt.messages is set
    removed: dict[str, int]
    n_ties_included: int
    n_both_bad_included: int

    @property
    def n_pairs(self) -> int:
        return int(self.selected.shape[0])


def select(project: Project, opts: ExportOptions, progress: Progress | None = None) -> Selection:
    """Load, aggregate and filter; raises :class:`ExportError` when nothing is left."""
    progress = progress or Progress()
    precheck(project, opts)
    progress.stage("load")
    table = load_judgments(
        project, rounds=opts.rounds, pools=opts.pools, include_excluded=opts.include_excluded
    )
    item_prompt, item_round = table.item_prompt, table.item_round
    if len(table) == 0:  # raced with a deletion after the pre-check
        raise ExportError("no comparisons match: no judgments pass the rounds / pools filters")
    pool_names = dict(Pool.objects.filter(project=project).values_list("pk", "name"))
    progress.stage("aggregate")

    pool_ids, worker_pool_dense = np.unique(table.worker_pool, return_inverse=True)
    j = agg.Judgments(
        item=table.item,
        worker=table.worker,
        label=table.label,
        a_left=table.a_left,
        a_left_known=table.a_left_known,
        seconds=table.seconds,
        both_bad=table.both_bad,
        n_items=table.n_items,
        n_workers=table.n_workers,
        pool=worker_pool_dense.astype(np.int64),
        gold=table.gold,
        len_a=table.len_a.astype(np.float64),
        len_b=table.len_b.astype(np.float64),
    )
    # Dawid–Skene accuracies stand in for gold accuracy in the weight rule where gold is scarce.
    if opts.method in ("dawid_skene", "dawid_skene_debiased"):
        result = agg.aggregate(j, opts.method, pool_balanced=opts.pool_balanced)
        ds_accuracy = result.accuracy
        worker_weight, source = annotator_weight_vector(project, table, j, ds_accuracy)
    else:
        ds_accuracy = agg.aggregate(j, "dawid_skene").accuracy
        worker_weight, source = annotator_weight_vector(project, table, j, ds_accuracy)
        extra = {"worker_weights": worker_weight} if opts.method == "majority" else {}
        result = agg.aggregate(j, opts.method, pool_balanced=opts.pool_balanced, **extra)

    n_items = table.n_items
    label = result.label
    confidence = result.confidence
    n_per_item = np.bincount(j.item, minlength=n_items).astype(np.float64)
    agree = np.bincount(j.item, weights=(j.label == label[j.item]).astype(np.float64), minlength=n_items)
    agreement = np.divide(agree, n_per_item, out=np.zeros(n_items), where=n_per_item > 0)
    wsum = np.bincount(j.item, weights=worker_weight[j.worker], minlength=n_items)
    support = np.divide(wsum, n_per_item, out=np.zeros(n_items), where=n_per_item > 0)
    bb = np.bincount(j.item, weights=table.both_bad.astype(np.float64), minlength=n_items)
    plain_tie = np.bincount(
        j.item, weights=((j.label == agg.TIE) & ~table.both_bad).astype(np.float64), minlength=n_items
    )
    item_both_bad = bb > plain_tie
    if pool_ids.shape[0] > 1:
        pool_dis = agg.pool_disagreement(j).per_item
    else:
        pool_dis = np.full(n_items, np.nan)

    # Filters, in order; the first one that empties the selection is named.
    keep = np.ones(n_items, dtype=bool)
    removed = {"gold": 0, "min_confidence": 0, "ties": 0, "both_bad": 0}
    filt = f" ({_describe_filters(opts, pool_names)})" if (opts.rounds or opts.pools) else ""
    if not opts.include_gold:
        is_gold = table.gold >= 0
        removed["gold"] = int(is_gold.sum())
        keep &= ~is_gold
        if not keep.any():
            raise ExportError(
                f"no comparisons match: all {n_items} judged comparisons{filt} are gold (calibration) "
                "comparisons, and include_gold is off"
            )
    if opts.min_confidence > 0:
        low = keep & (confidence < opts.min_confidence - 1e-12)
        removed["min_confidence"] = int(low.sum())
        keep &= ~low
        if not keep.any():
            raise ExportError(
                f"no comparisons match: min_confidence={opts.min_confidence:g} "
                f"removes all {int(low.sum())} remaining "
                f"comparisons{filt} (the highest confidence is {confidence[keep | low].max():.3f})"
            )
    is_tie = label == agg.TIE
    tie_plain = keep & is_tie & ~item_both_bad
    tie_bb = keep & is_tie & item_both_bad
    n_left = int(keep.sum())
    if not opts.include_ties:
        removed["ties"] = int(tie_plain.sum())
        keep &= ~tie_plain
    if not opts.include_both_bad:
        removed["both_bad"] = int(tie_bb.sum())
        keep &= ~tie_bb
    if not keep.any():
        raise ExportError(
            f"no comparisons match: all {n_left} comparisons left{filt} are ties or both-bad, and "
            f"include_ties={opts.include_ties}, include_both_bad={opts.include_both_bad} exclude them"
        )
    selected = np.flatnonzero(keep)

    chat_prompts = np.array(
        sorted(
            Prompt.objects.filter(project=project, messages__isnull=False)
            .exclude(messages=None)
            .values_list("pk", flat=True)
            .iterator(chunk_size=20000)
        ),
        dtype=np.int64,
    )
    has_chat = bool(np.isin(item_prompt[selected], chat_prompts).any()) if chat_prompts.size else False
    conversational = opts.style == "conversational" or (opts.style == "auto" and has_chat)
    item_test = split_prompts(item_prompt[selected], item_prompt, opts.test_fraction, opts.seed)

    return Selection(
        project=project,
        opts=opts,
        table=table,
        judgments=j,
        result=result,
        worker_weight=worker_weight,
        weights_source=source,
        pool_ids=pool_ids,
        pool_names=pool_names,
        item_prompt=item_prompt,
        item_round=item_round,
        item_test=item_test,
        label=label,
        item_both_bad=item_both_bad,
        confidence=confidence,
        agreement=agreement,
        support=support,
        pool_disagreement=pool_dis,
        selected=selected,
        conversational=conversational,
        chat_prompts=chat_prompts,
        removed=removed,
        n_ties_included=int((keep & is_tie & ~item_both_bad).sum()),
        n_both_bad_included=int((keep & is_tie & item_both_bad).sum()),
    )


# --------------------------------------------------------------------------- pseudonyms


def pseudonym_key(export: Export, opts: ExportOptions) -> bytes:
    if opts.stable_pseudonyms:
        return hmac.new(
            settings.SECRET_KEY.encode(),
            f"prefloop/export-pseudonyms/project/{export.project_id}".encode(),
            hashlib.sha256,
        ).digest()
    if not export.salt:
        raise ExportError("this export has no pseudonym key")
    return bytes.fromhex(export.salt)


def pseudonym(key: bytes, user_id: int) -> str:
    return PSEUDONYM_PREFIX + hmac.new(key, f"user:{int(user_id)}".encode(), hashlib.sha256).hexdigest()[:16]


# --------------------------------------------------------------------------- progress


class Progress:
    """Receives a build's progress. ``stage(name, total)`` starts a stage, ``advance(n)`` moves it."""

    #: Stage -> share of the whole build (the fraction shown in the UI).
    STAGES = {"load": 0.10, "aggregate": 0.10, "pairs": 0.55, "judgments": 0.10, "hf": 0.10, "card": 0.05}

    def __init__(self) -> None:
        self.name = ""
        self.total = 0
        self.done = 0
        self.base = 0.0

    def stage(self, name: str, total: int = 0) -> None:
        if self.name:
            self.base += self.STAGES.get(self.name, 0.0)
        self.name, self.total, self.done = name, total, 0
        self.changed()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.changed()

    @property
    def fraction(self) -> float:
        share = self.STAGES.get(self.name, 0.0)
        inner = (self.done / self.total) if self.total else 0.0
        return min(0.99, self.base + share * min(1.0, inner))

    def changed(self) -> None:  # override
        pass

    def close(self) -> None:  # override
        pass


class DatabaseProgress(Progress):
    """Writes ``progress`` and ``step`` into the export row, at most twice a second."""

    def __init__(self, export: Export, interval: float = 0.5) -> None:
        super().__init__()
        self.export_id = export.pk
        self.interval = interval
        self.last = 0.0

    def changed(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and self.done and self.done < self.total:
            return
        self.last = now
        step = self.name + (f" {self.done}/{self.total}" if self.total else "")
        Export.objects.filter(pk=self.export_id).update(progress=round(self.fraction, 4), step=step[:200])


# --------------------------------------------------------------------------- writers


def _messages(value) -> list[dict[str, str]] | None:
    """Prompt.messages normalized to [{role, content}] strings (None when not a chat)."""
    if not value or not isinstance(value, list):
        return None
    out = []
    for m in value:
        if not isinstance(m, dict):
            continue
        content = m.get("content", "")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        out.append({"role": str(m.get("role", "user")), "content": content})
    return out or None


def pair_schema(conversational: bool):
    import pyarrow as pa

    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = msgs if conversational else pa.string()
    types = {
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "label": pa.string(),
        "weight": pa.float64(),
        "confidence": pa.float64(),
        "p_chosen": pa.float64(),
        "p_rejected": pa.float64(),
        "p_tie": pa.float64(),
        "n_judgments": pa.int32(),
        "agreement": pa.float64(),
        "pool_disagreement": pa.float64(),
        "comparison_id": pa.int64(),
        "prompt_id": pa.int64(),
        "round": pa.int32(),
        "model_chosen": pa.string(),
        "model_rejected": pa.string(),
        "chosen_response": pa.string(),
        "gold": pa.bool_(),
        "split": pa.string(),
    }
    assert list(types) == list(PAIR_FIELDS)
    return pa.schema([(name, t) for name, t in types.items()])


def _r(x: np.ndarray, digits: int = 6) -> list:
    return np.round(x.astype(np.float64), digits).tolist()


class PairChunk:
    """Columns of one chunk of pairs (lists), plus the plain-text versions CSV needs."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {}
        self.plain_prompt: list[str] = []
        self.plain_chosen: list[str] = []
        self.plain_rejected: list[str] = []


def rows_by_id(base, ids: np.ndarray, fields: tuple[str, ...]) -> dict[int, tuple]:
    """``{id: values_list row}`` for the sorted ``ids`` of ``base`` (a queryset of one project).

    Dense ids (the usual case: a project's rows were created together) are read as one
    ``pk`` range scan, skipping the few rows not asked for; sparse ids with ``pk__in`` in
    pieces of at most 900 (below SQLite's smallest bound-parameter limit).
    """
    if ids.size == 0:
        return {}
    from django.db import connection

    lo, hi = int(ids[0]), int(ids[-1])
    if hi - lo + 1 <= 2 * ids.size:
        parts = [base.filter(pk__gte=lo, pk__lte=hi)]
    else:
        step = 900 if connection.vendor == "sqlite" else 10_000
        parts = [base.filter(pk__in=ids[i : i + step].tolist()) for i in range(0, ids.size, step)]
    wanted = set(ids.tolist())
    out = {}
    for qs in parts:
        for row in qs.order_by("pk").values_list("pk", *fields).iterator(chunk_size=CHUNK):
            if row[0] in wanted:
                out[row[0]] = row
    return out


PAIR_TEXT_FIELDS = (
    "prompt__text",
    "prompt__messages",
    "response_a__text",
    "response_a__model_name",
    "response_b__text",
    "response_b__model_name",
)


def _pair_chunks(sel: Selection, progress: Progress) -> Iterable[PairChunk]:
    """Yield the selected pairs in comparison-id order, :data:`CHUNK` at a time (texts streamed)."""
    t = sel.table
    proba = sel.result.proba
    n_per_item = np.bincount(sel.judgments.item, minlength=t.n_items)
    for start in range(0, sel.n_pairs, CHUNK):
        idx = sel.selected[start : start + CHUNK]
        cids = t.comparison_ids[idx]
        rows = rows_by_id(Comparison.objects.filter(project=sel.project), cids, PAIR_TEXT_FIELDS)
        label = sel.label[idx]
        is_tie = label == agg.TIE
        a_chosen = label != agg.B  # ties: chosen = A by convention
        p_a, p_b, p_tie = proba[idx, 0], proba[idx, 1], proba[idx, 2]
        p_chosen = np.where(is_tie, 0.5, np.where(a_chosen, p_a, p_b))
        p_rejected = np.where(is_tie, 0.5, np.where(a_chosen, p_b, p_a))
        weight = np.where(is_tie, p_tie, p_chosen) * sel.support[idx]
        names = np.where(is_tie, np.where(sel.item_both_bad[idx], "both_bad", "tie"), "preference").tolist()
        dis = sel.pool_disagreement[idx]
        chunk = PairChunk()
        prompts, chosen, rejected, m_chosen, m_rejected = [], [], [], [], []
        for cid, a_first in zip(cids.tolist(), a_chosen.tolist()):
            row = rows.get(cid)
            if row is None:
                raise ExportError(f"comparison {cid} was deleted while the export was being built")
            _, p_text, p_msgs, a_text, a_model, b_text, b_model = row
            c_text, r_text = (a_text, b_text) if a_first else (b_text, a_text)
            m_chosen.append(a_model if a_first else b_model)
            m_rejected.append(b_model if a_first else a_model)
            chunk.plain_prompt.append(p_text)
            chunk.plain_chosen.append(c_text)
            chunk.plain_rejected.append(r_text)
            if sel.conversational:
                msgs = _messages(p_msgs) or [{"role": "user", "content": p_text}]
                prompts.append(msgs)
                chosen.append([{"role": "assistant", "content": c_text}])
                rejected.append([{"role": "assistant", "content": r_text}])
            else:
                prompts.append(p_text)
                chosen.append(c_text)
                rejected.append(r_text)
        chunk.cols = {
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "label": names,
            "weight": _r(weight),
            "confidence": _r(sel.confidence[idx]),
            "p_chosen": _r(p_chosen),
            "p_rejected": _r(p_rejected),
            "p_tie": _r(p_tie),
            "n_judgments": n_per_item[idx].tolist(),
            "agreement": _r(sel.agreement[idx]),
            "pool_disagreement": [None if math.isnan(v) else v for v in _r(dis)],
            "comparison_id": cids.tolist(),
            "prompt_id": sel.item_prompt[idx].tolist(),
            "round": sel.item_round[idx].tolist(),
            "model_chosen": m_chosen,
            "model_rejected": m_rejected,
            "chosen_response": np.where(a_chosen, "a", "b").tolist(),
            "gold": (t.gold[idx] >= 0).tolist(),
            "split": np.where(sel.item_test[idx], "test", "train").tolist(),
        }
        yield chunk
        progress.advance(len(idx))


class JsonlWriter:
    def __init__(self, path: Path, fields: list[str]) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="\n")
        self.fields = fields
        self.encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode

    def write(self, cols: dict[str, list]) -> None:
        columns = [cols[name] for name in self.fields]
        encode = self.encode
        fields = self.fields
        self.f.write("".join(encode(dict(zip(fields, values))) + "\n" for values in zip(*columns)))

    def close(self) -> None:
        self.f.close()


class CsvWriter:
    def __init__(self, path: Path, fields: list[str]) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="")
        self.w = csv.writer(self.f)
        self.fields = fields
        self.w.writerow(fields)

    def write(self, cols: dict[str, list]) -> None:
        columns = [cols[name] for name in self.fields]
        self.w.writerows(["" if v is None else v for v in values] for values in zip(*columns))

    def close(self) -> None:
        self.f.close()


class ArrowWriters:
    """The Parquet file and/or the per-split Arrow IPC streams that become the datasets folder."""

    def __init__(self, schema, parquet_path: Path | None, stream_paths: dict[str, Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = schema
        self.parquet = (
            pq.ParquetWriter(str(parquet_path), schema, compression="zstd") if parquet_path else None
        )
        self.streams = {split: (pa.OSFile(str(p), "wb"), None) for split, p in stream_paths.items()}
        self.streams = {
            split: (sink, pa.ipc.new_stream(sink, schema)) for split, (sink, _) in self.streams.items()
        }

    def write(self, cols: dict[str, list]) -> None:
        batch = self.pa.RecordBatch.from_pydict(cols, schema=self.schema)
        if self.parquet is not None:
            self.parquet.write_batch(batch)
        if self.streams:
            split = batch.column("split")
            for name, (_, writer) in self.streams.items():
                part = batch.filter(self.pa.compute.equal(split, name))
                if part.num_rows:
                    writer.write_batch(part)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        for sink, writer in self.streams.values():
            writer.close()
            sink.close()


def write_pairs(sel: Selection, folder: Path, progress: Progress) -> dict[str, int]:
    """Write the pairwise formats; returns the number of rows per split."""
    import pyarrow.compute  # noqa: F401  (pa.compute)

    formats = set(sel.opts.formats)
    fields = list(PAIR_FIELDS)
    jsonl = JsonlWriter(folder / FORMAT_FILES["jsonl"], fields) if "jsonl" in formats else None
    csvw = CsvWriter(folder / FORMAT_FILES["csv"], fields) if "csv" in formats else None
    splits = ["train", "test"] if sel.opts.test_fraction > 0 else ["train"]
    stream_paths = {}
    if "hf" in formats:
        tmp = folder / ".arrow"
        tmp.mkdir(exist_ok=True)
        stream_paths = {s: tmp / f"{s}.arrow" for s in splits}
    arrow = None
    if "parquet" in formats or stream_paths:
        parquet_path = folder / FORMAT_FILES["parquet"] if "parquet" in formats else None
        arrow = ArrowWriters(pair_schema(sel.conversational), parquet_path, stream_paths)
    counts = {"train": 0, "test": 0}
    progress.stage("pairs", sel.n_pairs)
    try:
        for chunk in _pair_chunks(sel, progress):
            if jsonl:
                jsonl.write(chunk.cols)
            if csvw:
                plain = dict(
                    chunk.cols,
                    prompt=chunk.plain_prompt,
                    chosen=chunk.plain_chosen,
                    rejected=chunk.plain_rejected,
                )
                csvw.write(plain)
            if arrow:
                arrow.write(chunk.cols)
            n_test = sum(1 for s in chunk.cols["split"] if s == "test")
            counts["test"] += n_test
            counts["train"] += len(chunk.cols["split"]) - n_test
    finally:
        for w in (jsonl, csvw, arrow):
            if w is not None:
                w.close()
    return counts


def write_hf(sel: Selection, folder: Path, progress: Progress) -> None:
    """Turn the per-split Arrow streams into a ``datasets`` DatasetDict folder (save_to_disk)."""
    import datasets
    from datasets import Dataset, DatasetDict

    progress.stage("hf")
    tmp = folder / ".arrow"
    splits = ["train", "test"] if sel.opts.test_fraction > 0 else ["train"]
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dd = DatasetDict({s: Dataset.from_file(str(tmp / f"{s}.arrow")) for s in splits})
        dd.save_to_disk(str(folder / FORMAT_FILES["hf"]))
        del dd
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    shutil.rmtree(tmp)


def write_judgments(sel: Selection, folder: Path, key: bytes, progress: Progress) -> int:
    """One row per aggregated judgment, from the arrays (rationales streamed when included).

    Judgments on gold comparisons are left out unless ``include_gold``. Returns the row count.
    """
    t = sel.table
    n = len(t)
    on_gold = t.gold[t.item] >= 0
    written = 0
    names = [pseudonym(key, int(u)) for u in t.annotator_ids]
    pool_name = {pid: name for pid, name in sel.pool_names.items()}
    choice_of = {0: "a", 1: "b"}
    fields = [f for f in JUDGMENT_FIELDS if f != "rationale"] + (
        ["rationale"] if sel.opts.include_rationales else []
    )
    writer = JsonlWriter(folder / FORMAT_FILES["judgments"], fields)
    progress.stage("judgments", n)
    step = 20000
    try:
        for start in range(0, n, step):
            sl = np.arange(start, min(start + step, n))
            if not sel.opts.include_gold:
                sl = sl[~on_gold[sl]]
            if sl.size == 0:
                progress.advance(min(step, n - start))
                continue
            item, worker = t.item[sl], t.worker[sl]
            label, both_bad, a_left = t.label[sl], t.both_bad[sl], t.a_left[sl]
            known = t.a_left_known[sl]
            choice = [
                "both_bad" if bb else ("tie" if lab == 2 else choice_of[lab])
                for lab, bb in zip(label.tolist(), both_bad.tolist())
            ]
            left_label = np.where(a_left, 0, 1)
            # "": the choice itself (tie / both_bad); None: a side that is not known.
            shown = np.where(
                label == 2, "", np.where(known, np.where(label == left_label, "left", "right"), "?")
            ).tolist()
            choice_shown = [None if s == "?" else (s or c) for s, c in zip(shown, choice)]
            display_order = [
                ("AB" if al else "BA") if k else None for al, k in zip(a_left.tolist(), known.tolist())
            ]
            seconds = t.seconds[sl]
            strength = t.strength[sl]
            cols = {
                "annotator": [names[w] for w in worker.tolist()],
                "pool": [pool_name.get(p) for p in t.pool_of_judgment[sl].tolist()],
                "comparison_id": t.comparison_ids[item].tolist(),
                "prompt_id": sel.item_prompt[item].tolist(),
                "round": sel.item_round[item].tolist(),
                "split": np.where(sel.item_test[item], "test", "train").tolist(),
                "display_order": display_order,
                "choice": choice,
                "choice_shown": choice_shown,
                "strength": [s if s > 0 else None for s in strength.tolist()],
                "seconds": [None if math.isnan(s) else round(s, 3) for s in seconds.tolist()],
                "annotator_weight": _r(sel.worker_weight[worker], 4),
            }
            if sel.opts.include_rationales:
                jids = t.judgment_ids[sl]
                text = rows_by_id(Judgment.objects.filter(project=sel.project), jids, ("rationale",))
                cols["rationale"] = [text[pk][1] if pk in text else "" for pk in jids.tolist()]
            writer.write(cols)
            written += len(choice)
            progress.advance(min(step, n - start))
    finally:
        writer.close()
    return written


# --------------------------------------------------------------------------- hash and metadata


def _files(folder: Path) -> list[Path]:
    """Every file of an export except ``metadata.json``, in the fixed (sorted path) order."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel != METADATA_FILE:
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_hash(folder: Path) -> tuple[str, list[dict]]:
    """The content hash of an export folder and its file list.

    ``sha256`` over one line per file, in sorted relative-path order, ``metadata.json``
    excluded: ``"<relative path>\\t<size in bytes>\\t<sha256 of the file>\\n"``.
    """
    folder = Path(folder)
    outer = hashlib.sha256()
    listing = []
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        digest = file_sha256(p)
        size = p.stat().st_size
        outer.update(f"{rel}\t{size}\t{digest}\n".encode())
        listing.append({"path": rel, "bytes": size, "sha256": digest})
    return outer.hexdigest(), listing


def verify_folder(folder: Path) -> bool:
    """True when the folder's files still hash to the content hash in its metadata.json."""
    folder = Path(folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    return folder_hash(folder)[0] == meta["content_hash"]


def clean_json(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to None (valid JSON for files and JSONField)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _make_read_only(folder: Path) -> None:
    for p in _files(folder) + [folder / METADATA_FILE]:
        if p.exists():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


# --------------------------------------------------------------------------- statistics for the card


def _n_boot(n_judgments: int) -> int:
    """Bootstrap replicates: ``PREFLOOP_EXPORT_BOOTSTRAP`` (1000), fewer for very large
    exports (at least 100; the card says how many)."""
    most = int(getattr(settings, "PREFLOOP_EXPORT_BOOTSTRAP", 1000))
    return int(min(most, max(min(100, most), 20_000_000 // max(n_judgments, 1))))


def _summary(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def compute_stats(sel: Selection, counts: dict[str, int]) -> dict:
    from .agreement import agreement_report, agreement_summary

    t = sel.table
    j = sel.judgments
    selected = sel.selected
    n_boot = _n_boot(j.n)
    if len(sel.pool_ids) > 1:
        report = agreement_report(j, n_boot=n_boot, seed=sel.opts.seed)
    else:  # one pool: its figures are the overall ones
        overall = agreement_summary(j, n_boot=n_boot, seed=sel.opts.seed)
        report = {"overall": overall, "per_group": {0: overall}}
    dense_name = {
        i: (sel.pool_names.get(int(pid), f"pool {pid}") if pid >= 0 else "(no pool)")
        for i, pid in enumerate(sel.pool_ids)
    }
    per_pool = {dense_name[int(g)]: s for g, s in report.get("per_group", {}).items()}
    between = report.get("between_groups")
    if between is not None:
        between = {"pools": [dense_name[i] for i in range(len(sel.pool_ids))], **between}
    pools = []
    worker_pool = j.pool
    for i, pid in enumerate(sel.pool_ids):
        in_pool = t.pool_of_judgment == pid
        pools.append(
            {
                "name": dense_name[i],
                "n_judgments": int(in_pool.sum()),
                "n_annotators": int((worker_pool == i).sum()),
            }
        )
    prompts_sel = sel.item_prompt[selected]
    test_sel = sel.item_test[selected]
    label = sel.label[selected]
    res = sel.result
    weight_tbl = (
        np.where(
            label == agg.TIE,
            res.proba[selected, 2],
            np.where(label == agg.B, res.proba[selected, 1], res.proba[selected, 0]),
        )
        * sel.support[selected]
    )
    return clean_json(
        {
            "n_pairs": sel.n_pairs,
            "n_train": counts.get("train", 0),
            "n_test": counts.get("test", 0),
            "n_prompts": int(np.unique(prompts_sel).size),
            "n_prompts_train": int(np.unique(prompts_sel[~test_sel]).size),
            "n_prompts_test": int(np.unique(prompts_sel[test_sel]).size),
            "n_comparisons_aggregated": int(t.n_items),
            "n_judgments": int(len(t)),
            "n_judgment_rows": counts.get("judgment_rows"),
            "n_annotators": int(t.n_workers),
            "n_pools": len(sel.pool_ids),
            "pools": pools,
            "removed": sel.removed,
            "n_ties_included": sel.n_ties_included,
            "n_both_bad_included": sel.n_both_bad_included,
            "n_gold": int((t.gold[selected] >= 0).sum()),
            "rounds": sorted(set(sel.item_round[selected].tolist())),
            "style": "conversational" if sel.conversational else "standard",
            "label_counts": {
                "a": int((label == agg.A).sum()),
                "b": int((label == agg.B).sum()),
                "tie": int((label == agg.TIE).sum()),
            },
            "confidence": _summary(sel.confidence[selected]),
            "weight": _summary(weight_tbl),
            "annotator_weight": _summary(sel.worker_weight),
            "weights_source": sel.weights_source,
            "aggregation": {
                "method": res.method,
                "pool_balanced": sel.opts.pool_balanced,
                "iterations": res.iterations,
                "converged": bool(res.converged),
                "log_likelihood": res.log_likelihood,
                "class_prior": res.prior,
            },
            "agreement": {
                "n_boot": n_boot,
                "level": 0.95,
                "overall": report["overall"],
                "per_pool": per_pool,
                "between_pools": between,
            },
        }
    )


# --------------------------------------------------------------------------- dataset card


STYLE_TEXT = {
    "conversational": "conversational (prompt/chosen/rejected are message lists)",
    "standard": "standard (prompt/chosen/rejected are strings)",
}
METHOD_TEXT = {
    "majority": "majority vote, each vote weighted by its annotator's weight w_j",
    "gold_weighted": "gold-weighted vote: each vote counts log(acc / (1 - acc)) of its annotator's "
    "Beta(2, 1)-posterior gold accuracy",
    "dawid_skene": "Dawid–Skene EM with per-annotator 3x3 confusion matrices (A / B / tie), "
    "initialized from vote shares, gold items clamped",
    "dawid_skene_debiased": "Dawid–Skene EM with an explicit per-annotator position (left/right click) "
    "bias, learned from judgments with a recorded display order (where it was not recorded, a "
    "position click counts as landing on either response with probability 1/2), gold items clamped",
}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(stat: dict | None) -> str:
    if not stat:
        return "n/a"
    v, lo, hi = stat.get("value"), stat.get("low"), stat.get("high")
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def render_card(export: Export, opts: ExportOptions, stats: dict) -> str:
    """The dataset card (README.md), generated from the export's options and statistics."""
    project = export.project
    lic = (project.license or "").strip()
    name = export.name or f"{project.name} preferences (export {export.pk})"
    n = stats["n_pairs"]
    size = (
        "n<1K"
        if n < 1000
        else "1K<n<10K"
        if n < 10_000
        else "10K<n<100K"
        if n < 100_000
        else "100K<n<1M"
        if n < 1_000_000
        else "1M<n<10M"
    )
    pool_names = {p: nm for p, nm in Pool.objects.filter(project=project).values_list("pk", "name")}
    front = [
        "---",
        f"pretty_name: {json.dumps(name)}",
        f"license: {json.dumps(lic) if lic else 'unknown'}",
        "tags: [preference, dpo, rlhf, human-feedback, prefloop]",
        "task_categories: [text-generation]",
        f"size_categories: [{size}]",
        "---",
        "",
    ]
    L = front + [f"# {name}", ""]
    L += [
        f"Human preference pairs from the prefloop project **{project.name}**, exported on "
        f"{export.created_at:%Y-%m-%d} (export {export.pk}). Each pair was judged by human annotators; "
        f"the judgments were aggregated into a calibrated probability that the chosen response is better, "
        f"and every pair carries a training weight.",
        "",
        "## Contents",
        "",
        "| | count |",
        "|---|---|",
        f"| pairs | {stats['n_pairs']} (train {stats['n_train']}, test {stats['n_test']}) |",
        f"| prompts | {stats['n_prompts']} "
        f"(train {stats['n_prompts_train']}, test {stats['n_prompts_test']}) |",
        f"| comparisons aggregated | {stats['n_comparisons_aggregated']} |",
        f"| removed by min_confidence | {stats['removed'].get('min_confidence', 0)} |",
        f"| ties excluded / included | {stats['removed'].get('ties', 0)} / {stats['n_ties_included']} |",
        f"| both-bad excluded / included | {stats['removed'].get('both_bad', 0)} "
        f"/ {stats['n_both_bad_included']} |",
        f"| gold (calibration) comparisons | {stats['n_gold']} included, "
        f"{stats['removed'].get('gold', 0)} left out |",
        f"| judgments | {stats['n_judgments']} |",
        f"| annotators | {stats['n_annotators']} |",
        f"| pools | {stats['n_pools']}: "
        + ", ".join(
            f"{p['name']} ({p['n_annotators']} annotators, {p['n_judgments']} judgments)"
            for p in stats["pools"]
        )
        + " |",
        f"| rounds | {', '.join(map(str, stats['rounds']))} |",
        f"| format | {STYLE_TEXT[stats['style']]} |",
        f"| license | {lic or 'not set in the project'} |",
        "",
        "## Files",
        "",
    ]
    descr = {
        "jsonl": "`preferences.jsonl`: one JSON object per pair in TRL's preference format "
        "(all splits; see `split`).",
        "parquet": "`preferences.parquet`: the same rows and columns as Parquet (zstd).",
        "hf": "`hf/`: a Hugging Face `datasets` DatasetDict (`train`"
        + (" and `test`" if opts.test_fraction > 0 else "")
        + ") written with `save_to_disk`.",
        "csv": "`preferences.csv`: the same rows for spreadsheets; prompt, chosen and rejected are "
        "plain text.",
        "judgments": "`judgments.jsonl`: one row per human judgment (pseudonymized annotators) on the "
        "aggregated comparisons, for your own aggregation"
        + ("." if opts.include_gold else " (gold comparisons left out)."),
    }
    L += [f"- {descr[f]}" for f in opts.formats]
    L += [
        "- `metadata.json`: options, counts, statistics, the file list with SHA-256 sums and the "
        "content hash.",
        "",
    ]
    L += ["## Filters and options", "", "| option | value |", "|---|---|"]
    L += [
        f"| rounds | {', '.join(map(str, opts.rounds)) if opts.rounds else 'all'} |",
        f"| pools | {', '.join(pool_names.get(p, str(p)) for p in opts.pools) if opts.pools else 'all'} |",
        f"| excluded annotators | {'included' if opts.include_excluded else 'left out'} |",
        "| gold comparisons | "
        + (
            "included (label = the gold answer)"
            if opts.include_gold
            else "left out (they stay useful for calibration)"
        )
        + " |",
        f"| min_confidence | {opts.min_confidence:g} |",
        f"| include_ties | {opts.include_ties} |",
        f"| include_both_bad | {opts.include_both_bad} |",
        f"| test_fraction | {opts.test_fraction:g} (split by prompt, seed {opts.seed}) |",
        f"| rationales | {'included in judgments.jsonl' if opts.include_rationales else 'left out'} |",
        "| pseudonyms | "
        + (
            "stable across this project’s exports"
            if opts.stable_pseudonyms
            else "stable within this export only"
        )
        + " |",
        "",
        "## Aggregation",
        "",
        f"Method **{opts.method}**: {METHOD_TEXT[opts.method]}."
        + (
            " Pools are balanced: every pool present on a comparison carries the same total weight."
            if opts.pool_balanced
            else ""
        ),
    ]
    a = stats["aggregation"]
    if opts.method.startswith("dawid_skene"):
        prior = a.get("class_prior") or []
        L += [
            "",
            f"EM ran {a['iterations']} iterations ({'converged' if a['converged'] else 'did not converge'}; "
            "defaults: smoothing 0.1, prior smoothing 1.0, tol 1e-6, max 100 iterations). "
            + (
                f"Estimated class prior: A {_fmt(prior[0])}, B {_fmt(prior[1])}, tie {_fmt(prior[2])}."
                if len(prior) == 3
                else ""
            ),
        ]
    conf = stats.get("confidence") or {}
    weight_stats = stats.get("weight") or {}
    L += [
        "",
        f"`confidence` (the largest posterior) over the exported pairs: mean {_fmt(conf.get('mean'))}, "
        f"median {_fmt(conf.get('median'))}, min {_fmt(conf.get('min'))}.",
        "",
        "## Weight rule",
        "",
        "```",
        WEIGHT_RULE,
        "```",
        "",
        f"Annotator weights come from {stats['weights_source']}. `weight` over the exported pairs: "
        f"mean {_fmt(weight_stats.get('mean'))}, median {_fmt(weight_stats.get('median'))}.",
        "Ties and both-bad have no chosen/rejected: they are excluded by default; when included they are "
        "written with `label` `tie` or `both_bad`, response A as `chosen`, and `p_chosen` = 0.5.",
        "",
        "## Agreement",
        "",
        f"On all {stats['n_judgments']} aggregated judgments; 95% bootstrap intervals over comparisons "
        f"({stats['agreement']['n_boot']} replicates).",
        "",
        "| statistic | overall |" + "".join(f" {p} |" for p in stats["agreement"]["per_pool"]),
        "|---|---|" + "---|" * len(stats["agreement"]["per_pool"]),
    ]
    overall = stats["agreement"]["overall"]
    per_pool = stats["agreement"]["per_pool"]
    for key, label in (
        ("raw_agreement", "raw agreement"),
        ("raw_agreement_no_ties", "raw agreement without ties"),
        ("krippendorff_alpha", "Krippendorff's alpha (nominal)"),
        ("fleiss_kappa", "Fleiss' kappa"),
        ("cohen_kappa", "mean pairwise Cohen's kappa"),
    ):
        L.append(
            f"| {label} | {_ci(overall.get(key))} |"
            + "".join(f" {_ci(s.get(key))} |" for s in per_pool.values())
        )
    L += [
        f"| comparisons with 2+ judgments | {overall.get('n_items')} |"
        + "".join(f" {s.get('n_items')} |" for s in per_pool.values()),
        "",
    ]
    between = stats["agreement"].get("between_pools")
    if between and len(between.get("pools", [])) > 1:
        names = between["pools"]
        L += [
            "Raw agreement between pools (pairs of votes on the same comparison, one from each pool):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for i, nm in enumerate(names):
            L.append(
                f"| {nm} | "
                + " | ".join(_fmt(between["raw_agreement"][i][k]) for k in range(len(names)))
                + " |"
            )
        L.append("")
    L += ["## Fields", "", "| field | meaning |", "|---|---|"]
    L += [f"| `{k}` | {v} |" for k, v in PAIR_FIELDS.items()]
    if opts.include_judgments:
        L += ["", "`judgments.jsonl`:", "", "| field | meaning |", "|---|---|"]
        L += [
            f"| `{k}` | {v} |"
            for k, v in JUDGMENT_FIELDS.items()
            if k != "rationale" or opts.include_rationales
        ]
    L += [
        "",
        "Annotators are pseudonymized: `ann-` + 16 hex digits of an HMAC of the user id under a secret key "
        + (
            "derived from the server's secret and the project (the same person has the same pseudonym in "
            "every export of this project made with stable pseudonyms)."
            if opts.stable_pseudonyms
            else "drawn for this export only (the same person has a different pseudonym in another export)."
        ),
        "No usernames, e-mails or user ids appear in any file.",
        "",
        "## Load",
        "",
        "```python",
    ]
    if "hf" in opts.formats:
        L += [
            "from datasets import load_from_disk",
            "",
            'ds = load_from_disk("hf")  # DatasetDict: '
            + ", ".join(["train"] + (["test"] if opts.test_fraction > 0 else [])),
            "",
        ]
    if "jsonl" in opts.formats:
        L += [
            "from datasets import load_dataset",
            "",
            'pairs = load_dataset("json", data_files="preferences.jsonl", split="train")',
            'train = pairs.filter(lambda r: r["split"] == "train")',
            'test = pairs.filter(lambda r: r["split"] == "test")',
            "",
        ]
    if "parquet" in opts.formats:
        L += ['pairs = load_dataset("parquet", data_files="preferences.parquet", split="train")', ""]
    L += [
        "```",
        "",
        "## Train with TRL (DPO)",
        "",
        "```python",
        "from datasets import load_from_disk"
        if "hf" in opts.formats
        else "from datasets import load_dataset",
        "from trl import DPOConfig, DPOTrainer",
        "",
        'ds = load_from_disk("hf")'
        if "hf" in opts.formats
        else 'pairs = load_dataset("json", data_files="preferences.jsonl", split="train")\n'
        'ds = {s: pairs.filter(lambda r, s=s: r["split"] == s) for s in ("train", "test")}',
        'train = ds["train"].filter(lambda r: r["label"] == "preference")  # ties have no chosen/rejected',
        "trainer = DPOTrainer(",
        '    model="path/to/your/model",',
        '    args=DPOConfig(output_dir="dpo-out", per_device_train_batch_size=8),',
        "    train_dataset=train,",
        '    eval_dataset=ds["test"]'
        + ("," if opts.test_fraction > 0 else "  # no test split: drop this line"),
        ")",
        "trainer.train()",
        "```",
        "",
        "TRL reads `prompt`, `chosen` and `rejected` and ignores the other columns. To use the calibration, "
        "filter on `confidence`/`weight`, or train with prefloop's weighted DPO loss (`training/losses.py`), "
        "which multiplies each pair's loss by `weight`.",
        "",
        "## Integrity",
        "",
        "`metadata.json` holds `content_hash`: SHA-256 over the lines `<path>\\t<bytes>\\t<sha256>` of "
        "every file except `metadata.json`, in sorted path order. The export is immutable once built.",
        "",
    ]
    return "\n".join(L)


# --------------------------------------------------------------------------- build


def export_root() -> Path:
    return Path(settings.PREFLOOP_EXPORTS_DIR)


def default_folder(export: Export) -> Path:
    return export_root() / str(export.pk)


def build_export(export: Export, *, out_dir: Path | None = None, progress: Progress | None = None) -> Export:
    """Build ``export`` into its folder (``out_dir`` or ``PREFLOOP_EXPORTS_DIR/<id>``).

    Marks the row running, writes every requested format into a temporary sibling folder,
    renames it into place, records stats, content hash and path, and marks it succeeded.
    A built export is never rebuilt (:class:`ExportError`). Raises on failure, leaving no
    folder behind; the caller marks the row failed (:func:`mark_failed`).
    """
    export.refresh_from_db()
    if export.status == JobStatus.SUCCEEDED:
        raise ExportError(f"export {export.pk} is already built and immutable")
    progress = progress or DatabaseProgress(export)
    opts = ExportOptions.from_params(export.params)
    final = Path(out_dir) if out_dir is not None else default_folder(export)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and out_dir is not None:
        raise ExportError(f"--out {final} exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.building-*"):  # left by a worker that was killed
        if time.time() - stale.stat().st_mtime > STALE_BUILD_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.building-{secrets.token_hex(4)}"
    Export.objects.filter(pk=export.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), progress=0.0, error="", step="selecting"
    )
    timings = {}
    try:
        t0 = time.perf_counter()
        sel = select(export.project, opts, progress)
        timings["select"] = time.perf_counter() - t0
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        counts = write_pairs(sel, tmp, progress)
        timings["pairs"] = time.perf_counter() - t0
        if opts.include_judgments:
            t0 = time.perf_counter()
            counts["judgment_rows"] = write_judgments(sel, tmp, pseudonym_key(export, opts), progress)
            timings["judgments"] = time.perf_counter() - t0
        if "hf" in opts.formats:
            t0 = time.perf_counter()
            write_hf(sel, tmp, progress)
            timings["hf"] = time.perf_counter() - t0
        progress.stage("card")
        t0 = time.perf_counter()
        stats = compute_stats(sel, counts)
        timings["card"] = time.perf_counter() - t0
        stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        (tmp / CARD_FILE).write_text(render_card(export, opts, stats), encoding="utf-8")
        digest, listing = folder_hash(tmp)
        stats["files"] = listing
        metadata = clean_json(
            {
                "format_version": 1,
                "export_id": export.pk,
                "name": export.name,
                "project": {
                    "id": export.project_id,
                    "name": export.project.name,
                    "license": export.project.license,
                },
                "created_at": export.created_at.isoformat(),
                "options": opts.to_params(),
                "weight_rule": WEIGHT_RULE,
                "pair_fields": PAIR_FIELDS,
                "judgment_fields": {
                    k: v for k, v in JUDGMENT_FIELDS.items() if k != "rationale" or opts.include_rationales
                }
                if opts.include_judgments
                else {},
                "stats": {k: v for k, v in stats.items() if k != "seconds"},
                "files": listing,
                "content_hash_rule": "sha256 over '<path>\\t<bytes>\\t<sha256>\\n' per file except "
                "metadata.json, sorted by path",
                "content_hash": digest,
            }
        )
        (tmp / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _make_read_only(tmp)
        with transaction.atomic():
            row = Export.objects.select_for_update().get(pk=export.pk)
            if row.status == JobStatus.SUCCEEDED:  # a duplicate delivery finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return row
            if final.exists():
                if out_dir is not None and final.is_dir() and not any(final.iterdir()):
                    final.rmdir()
                else:
                    shutil.rmtree(final)
            os.replace(tmp, final)
            Export.objects.filter(pk=export.pk).update(
                status=JobStatus.SUCCEEDED,
                progress=1.0,
                step="done",
                error="",
                path=str(final.resolve()),
                content_hash=digest,
                n_rows=stats["n_pairs"],
                stats=stats,
                finished_at=timezone.now(),
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
    export.refresh_from_db()
    return export


# --------------------------------------------------------------------------- downloads


#: Download name -> (file in the folder or an archive kind, content type).
DOWNLOADS = {
    "jsonl": ("preferences.jsonl", "application/x-ndjson"),
    "parquet": ("preferences.parquet", "application/vnd.apache.parquet"),
    "csv": ("preferences.csv", "text/csv"),
    "judgments": ("judgments.jsonl", "application/x-ndjson"),
    "hf": ("hf.tar.gz", "application/gzip"),
    "card": ("README.md", "text/markdown"),
    "metadata": ("metadata.json", "application/json"),
    "zip": ("zip", "application/zip"),
    "tar.gz": ("tar.gz", "application/gzip"),
}


def may_download(export: Export, role: str | None) -> bool:
    """Admins and researchers may download; an export with gold answers, admins only."""
    from annotate.models import Role

    if role == Role.ADMIN:
        return True
    if role != Role.RESEARCHER:
        return False
    return not ExportOptions.from_params(export.params).include_gold


def available_downloads(export: Export) -> list[str]:
    if export.status != JobStatus.SUCCEEDED:
        return []
    formats = ExportOptions.from_params(export.params).formats
    return [f for f in FORMATS if f in formats] + ["card", "metadata", "zip", "tar.gz"]


def _archive_dir(export: Export) -> Path:
    return export_root() / "_archives" / str(export.pk)


def _build_archive(export: Export, kind: str, target: Path) -> None:
    folder = Path(export.path)
    base = f"prefloop-export-{export.pk}"
    tmp = target.with_name(target.name + f".{secrets.token_hex(4)}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
                for p in _files(folder) + [folder / METADATA_FILE]:
                    z.write(p, f"{base}/{p.relative_to(folder).as_posix()}")
        else:
            src = folder / FORMAT_FILES["hf"] if kind == "hf" else folder
            arc = f"{base}-hf" if kind == "hf" else base
            with tarfile.open(tmp, "w:gz") as tar:
                files = _files(src) + ([] if kind == "hf" else [folder / METADATA_FILE])
                for p in files:
                    tar.add(p, f"{arc}/{p.relative_to(src).as_posix()}", recursive=False)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_file(export: Export, what: str) -> tuple[Path, str, str]:
    """``(path, download filename, content type)`` of one download of a built export.

    ``what``: a format (jsonl, parquet, csv, judgments, hf), ``card``, ``metadata``, or an
    archive of the whole folder (``zip``, ``tar.gz``). Archives (and the hf tarball) are made
    on first request and kept. Raises :class:`ExportError` for anything not available.
    """
    if export.status != JobStatus.SUCCEEDED:
        raise ExportError(f"export {export.pk} is not built ({export.status})")
    if what not in DOWNLOADS:
        raise ExportError(f"unknown download {what!r}; one of {', '.join(DOWNLOADS)}")
    if what not in available_downloads(export):
        raise ExportError(
            f"export {export.pk} has no {what} file (formats: {', '.join(available_downloads(export))})"
        )
    name, ctype = DOWNLOADS[what]
    base = f"prefloop-export-{export.pk}"
    folder = Path(export.path)
    if what in ("zip", "tar.gz", "hf"):
        filename = f"{base}-hf.tar.gz" if what == "hf" else f"{base}.{what}"
        target = _archive_dir(export) / filename
        if not target.exists():
            _build_archive(export, what, target)
        return target, filename, ctype
    path = folder / name
    if not path.exists():
        raise ExportError(f"export {export.pk}: {name} is missing from {folder}")
    return path, f"{base}-{name}", ctype


def read_card(export: Export) -> str:
    if export.status != JobStatus.SUCCEEDED or not export.path:
        return ""
    path = Path(export.path) / CARD_FILE
    return path.read_text(encoding="utf-8") if path.exists() else ""
