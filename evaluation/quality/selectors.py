"""Reads of the quality dashboard and API: the annotator table (sorted and paged in the
database), its summary counts, the stored reports, and an annotator's own accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    FilteredRelation,
    FloatField,
    Func,
    IntegerField,
    JSONField,
    OuterRef,
    Q,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Abs, Cast, Coalesce, Floor, Greatest, Least, Lower

from annotate.models import GoldAnswer, Judgment, Membership, Project, Role

from ..models import AnnotatorQuality, JobStatus, QualityReport
from .scheduling import check_report
from .services import effective_weight
from .thresholds import BELOW_THRESHOLD_FLAGS, FLAG_HELP, FLAG_LABELS


@dataclass
class AnnotatorRow:
    """One row of the dashboard's annotator table."""

    user_id: int
    username: str
    pool: str
    membership: Membership | None
    quality: AnnotatorQuality | None
    extras: dict = field(default_factory=dict)

    @property
    def excluded(self) -> bool:
        return bool(self.membership and self.membership.excluded)

    @property
    def override(self) -> float | None:
        return self.membership.weight_override if self.membership else None

    @property
    def weight(self) -> float:
        return effective_weight(self.membership, self.quality)

    @property
    def flags(self) -> list[str]:
        flags = list(self.quality.flags) if self.quality else []
        if self.excluded and "excluded" not in flags:
            flags.append("excluded")
        if not self.excluded and "excluded" in flags:
            flags.remove("excluded")
        return flags

    @property
    def flag_labels(self) -> list[tuple[str, str, str]]:
        return [(f, FLAG_LABELS.get(f, f), FLAG_HELP.get(f, "")) for f in self.flags]

    @property
    def below_threshold(self) -> bool:
        return any(f in BELOW_THRESHOLD_FLAGS for f in self.flags)

    def value(self, key: str):
        """Sort key for a column (None sorts last)."""
        q = self.quality
        if key == "annotator":
            return self.username.lower()
        if key == "pool":
            return self.pool.lower()
        if key == "weight":
            return self.weight
        if key == "flags":
            return len(self.flags)
        if q is None:
            return None
        if key in ("position_bias", "length_bias"):
            v = getattr(q, key)
            return None if v is None else abs(v)
        return getattr(q, key, None)


SORT_KEYS = (
    "annotator",
    "pool",
    "n_judgments",
    "gold_accuracy",
    "estimated_accuracy",
    "position_bias",
    "length_bias",
    "tie_rate",
    "median_seconds",
    "weight",
    "flags",
)


class _JSONArrayLength(Func):
    """The number of elements of a JSON array column (SQLite and PostgreSQL)."""

    function = "JSON_ARRAY_LENGTH"
    output_field = IntegerField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return super().as_sql(compiler, connection, function="JSONB_ARRAY_LENGTH", **extra_context)


def _has_flag(name: str) -> Q:
    """Rows of an ``AnnotatorQuality`` queryset aliased with ``flags_text`` (see
    :func:`_qualities`) whose stored flags hold ``name``. The flags are a JSON list of plain
    names, so the quoted name matches exactly one element."""
    return Q(flags_text__contains=f'"{name}"')


def _qualities(project: Project):
    return AnnotatorQuality.objects.filter(project=project).alias(flags_text=Cast("flags", TextField()))


def _below_threshold() -> Q:
    q = Q()
    for name in BELOW_THRESHOLD_FLAGS:
        q |= _has_flag(name)
    return q


def _clamp(expression):
    return Greatest(Least(expression, Value(1.0)), Value(0.0))


def _sort_columns(key: str) -> tuple:
    """Column ``key`` of the annotator table as :meth:`AnnotatorRow.value` computes it (NULL
    where that gives None), as two database expressions: over ``AnnotatorQuality`` rows (with
    ``m``, the annotator's membership if any, and ``flags_text``) and over the memberships of
    annotators without one."""
    if key == "annotator":
        return Lower("annotator__username"), Lower("user__username")
    if key == "pool":
        return Lower(Coalesce("m__pool__name", Value("—"))), Lower(Coalesce("pool__name", Value("—")))
    if key == "weight":  # effective_weight()
        return (
            Case(
                When(m__excluded=True, then=Value(0.0)),
                When(m__weight_override__isnull=False, then=_clamp(F("m__weight_override"))),
                default=_clamp(F("weight")),
                output_field=FloatField(),
            ),
            Case(
                When(excluded=True, then=Value(0.0)),
                When(weight_override__isnull=False, then=_clamp(F("weight_override"))),
                default=Value(1.0),
                output_field=FloatField(),
            ),
        )
    if key == "flags":  # len(AnnotatorRow.flags): the stored flags, "excluded" as it is now
        return (
            ExpressionWrapper(
                _JSONArrayLength("flags")
                - Case(When(_has_flag("excluded"), then=Value(1)), default=Value(0))
                + Case(When(m__excluded=True, then=Value(1)), default=Value(0)),
                output_field=IntegerField(),
            ),
            Case(When(excluded=True, then=Value(1)), default=Value(0)),
        )
    field = AnnotatorQuality._meta.get_field(key)
    return (Abs(key) if key in ("position_bias", "length_bias") else F(key)), Value(None, output_field=field)


@dataclass
class AnnotatorTable:
    """The annotator table, sorted in the database: slice it (as Django's ``Paginator`` and
    DRF's paginations do) for ``{"uid", "uname", ...}`` per row; :meth:`count` counts it."""

    project: Project
    rows: Any  # the sorted union queryset

    def count(self) -> int:
        """Two small counts (the union itself would compute every column of every row)."""
        qualities = AnnotatorQuality.objects.filter(project=self.project)
        return qualities.count() + _members_without_quality(self.project).count()

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)


def _members_without_quality(project: Project):
    return Membership.objects.filter(project=project, role=Role.ANNOTATOR).filter(
        ~Exists(AnnotatorQuality.objects.filter(project=project, annotator=OuterRef("user_id")))
    )


def annotator_table(project: Project, sort: str = "annotator", descending: bool = False) -> AnnotatorTable:
    """The annotator table in table order: one row per annotator member or anyone with
    computed quality (former members included).

    Sorted by column ``sort`` (one of :data:`SORT_KEYS`, as :meth:`AnnotatorRow.value`), ties
    by name in the same direction; rows without a value (no statistics yet) come last in
    either direction, by name. The database sorts the union of two plain joins (stored
    statistics with their membership; annotator members without statistics). Slice (or page)
    it and give the slice to :func:`annotator_rows_for`: only those rows are built.
    """
    if sort not in SORT_KEYS:
        sort = "annotator"
    on_quality, on_member = _sort_columns(sort)
    columns = ("uid", "uname", "lname", "sort_value", "null_name")
    null_name = Case(When(sort_value__isnull=True, then=F("lname")))
    with_quality = (
        _qualities(project)
        .alias(
            m=FilteredRelation("annotator__memberships", condition=Q(annotator__memberships__project=project))
        )
        .annotate(
            uid=F("annotator_id"),
            uname=F("annotator__username"),
            lname=Lower("annotator__username"),
            sort_value=on_quality,
            null_name=null_name,
        )
        .values(*columns)
    )
    without = (
        _members_without_quality(project)
        .annotate(
            uid=F("user_id"),
            uname=F("user__username"),
            lname=Lower("user__username"),
            sort_value=on_member,
            null_name=null_name,
        )
        .values(*columns)
    )
    rows = with_quality.union(without, all=True)
    if not descending:
        rows = rows.order_by(F("sort_value").asc(nulls_last=True), "lname", "uid")
    else:
        # Rows without a value last, by name ascending (null_name: their name, else NULL).
        rows = rows.order_by(F("sort_value").desc(nulls_last=True), "null_name", "-lname", "-uid")
    return AnnotatorTable(project, rows)


def annotator_rows_for(project: Project, report: QualityReport | None, entries) -> list[AnnotatorRow]:
    """The table rows of ``entries`` (``{"uid", "uname"}``, e.g. one page of
    :func:`annotator_table`), in their order, with their extras from ``report`` (none
    without one)."""
    entries = list(entries)
    memberships = Membership.objects.filter(project=project).select_related("pool")
    qualities = AnnotatorQuality.objects.filter(project=project)
    ids = None  # more than 1,000 rows: the whole project (under the databases' parameter limits)
    if len(entries) <= 1000:
        ids = [e["uid"] for e in entries]
        memberships, qualities = memberships.filter(user_id__in=ids), qualities.filter(annotator_id__in=ids)
    by_user = {m.user_id: m for m in memberships}
    quality_of = {q.annotator_id: q for q in qualities}
    extras = _annotator_extras(report, ids)
    rows = []
    for e in entries:
        m = by_user.get(e["uid"])
        rows.append(
            AnnotatorRow(
                user_id=e["uid"],
                username=e["uname"],
                pool=(m.pool.name if m and m.pool else "—"),
                membership=m,
                quality=quality_of.get(e["uid"]),
                extras=extras.get(str(e["uid"]), {}),
            )
        )
    return rows


def annotator_rows(
    project: Project, report: QualityReport | None = None, sort: str = "annotator", descending: bool = False
) -> list[AnnotatorRow]:
    """Every row of the annotator table, sorted by ``sort`` (see :func:`annotator_table`)."""
    return annotator_rows_for(project, report, annotator_table(project, sort, descending))


def annotator_row(project: Project, report: QualityReport | None, user_id: int) -> AnnotatorRow | None:
    """One annotator's table row, or None if they are not in the table."""
    in_table = Q(memberships__project=project, memberships__role=Role.ANNOTATOR) | Exists(
        AnnotatorQuality.objects.filter(project=project, annotator=OuterRef("pk"))
    )
    user = get_user_model().objects.filter(in_table, pk=user_id).first()
    if user is None:
        return None
    return annotator_rows_for(project, report, [{"uid": user.pk, "uname": user.get_username()}])[0]


@dataclass
class TableSummary:
    """Counts over the whole annotator table, for the dashboard's heading and gold chart."""

    n_below: int  # rows below threshold (BELOW_THRESHOLD_FLAGS)
    n_gold: int  # annotators with a gold accuracy
    #: Each annotator with a gold accuracy, by name: ``{"label", "value", "low", "high",
    #: "flagged"}``; None when there are more than ``max_points`` of them.
    gold_points: list[dict] | None
    #: Otherwise ``GOLD_BINS`` equal bins of gold accuracy over [0, 1]:
    #: ``{"low", "high", "count", "flagged"}`` (flagged: below threshold).
    gold_bins: list[dict] | None


GOLD_BINS = 20


def table_summary(project: Project, max_points: int = 1000) -> TableSummary:
    """Aggregate queries over the project's stored annotator statistics: the count below
    threshold and the gold accuracies, one point per annotator up to ``max_points`` of them,
    else binned in the database."""
    qualities = _qualities(project)
    below = _below_threshold()
    counts = qualities.aggregate(
        n_below=Count("pk", filter=below), n_gold=Count("pk", filter=Q(gold_accuracy__isnull=False))
    )
    gold = qualities.filter(gold_accuracy__isnull=False)
    points = bins = None
    if counts["n_gold"] <= max_points:
        points = [
            {"label": name, "value": value, "low": low, "high": high, "flagged": flagged}
            for name, value, low, high, flagged in gold.annotate(
                flagged=ExpressionWrapper(below, output_field=BooleanField())
            )
            .order_by(Lower("annotator__username"), "annotator_id")
            .values_list(
                "annotator__username", "gold_accuracy", "gold_accuracy_low", "gold_accuracy_high", "flagged"
            )
        ]
    else:
        index = Least(Cast(Floor(F("gold_accuracy") * GOLD_BINS), IntegerField()), Value(GOLD_BINS - 1))
        found = {
            b: (n, flagged)
            for b, n, flagged in gold.annotate(b=index)
            .values("b")
            .annotate(n=Count("pk"), flagged=Count("pk", filter=below))
            .values_list("b", "n", "flagged")
        }
        bins = [
            {
                "low": b / GOLD_BINS,
                "high": (b + 1) / GOLD_BINS,
                "count": found.get(b, (0, 0))[0],
                "flagged": found.get(b, (0, 0))[1],
            }
            for b in range(GOLD_BINS)
        ]
    return TableSummary(
        n_below=counts["n_below"], n_gold=counts["n_gold"], gold_points=points, gold_bins=bins
    )


def latest_report(project: Project) -> QualityReport | None:
    """The newest finished (succeeded) report."""
    return (
        QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .first()
    )


class _WithoutKey(Func):
    """A JSON object column less one top-level key, computed by the database (SQLite, PostgreSQL)."""

    output_field = JSONField()

    def __init__(self, expression, key: str):
        super().__init__(expression)
        self.key = key

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"JSON_REMOVE({sql}, %s)", (*params, f'$."{self.key}"')

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"({sql} - %s)", (*params, self.key)


def dashboard_report(project: Project) -> QualityReport | None:
    """:func:`latest_report` with ``data`` less the per-annotator extras (``data["annotators"]``:
    an entry per annotator, megabytes at 10,000 annotators). :func:`annotator_rows_for` reads
    the extras of the rows it builds only."""
    report = (
        QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .defer("data")
        .annotate(data_less_annotators=_WithoutKey("data", "annotators"))
        .first()
    )
    if report is not None:
        report.data = report.data_less_annotators
    return report


def _annotator_extras(report: QualityReport | None, user_ids: list[int] | None) -> dict[str, dict]:
    """``report.data["annotators"]`` for ``user_ids`` (all with None), read in the database."""
    if report is None or user_ids == []:
        return {}
    table = connection.ops.quote_name(QualityReport._meta.db_table)
    if connection.vendor == "postgresql":
        sql = f"SELECT e.key, e.value FROM {table} r, jsonb_each(r.data -> 'annotators') e WHERE r.id = %s"
    else:
        sql = f"SELECT e.key, e.value FROM {table} r, json_each(r.data, '$.annotators') e WHERE r.id = %s"
    params: list = [report.pk]
    if user_ids is not None:
        sql += f" AND e.key IN ({', '.join(['%s'] * len(user_ids))})"
        params += [str(int(u)) for u in user_ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {key: json.loads(value) if isinstance(value, str) else value for key, value in rows}


def pending_report(project: Project) -> QualityReport | None:
    """The newest queued or running report created after the newest succeeded one, if any
    (``data`` is loaded when first read). A report whose worker died is recovered first
    (:func:`evaluation.quality.scheduling.check_report`: re-queued, or failed), so a dead report is
    never shown as running, and one older than a succeeded report is never shown at all."""
    done = (
        QualityReport.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .order_by("-created_at", "-pk")
        .values_list("created_at", flat=True)
        .first()
    )
    qs = QualityReport.objects.filter(project=project, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    if done is not None:
        qs = qs.filter(created_at__gt=done)
    for report in qs.order_by("-created_at", "-pk").defer("data")[:3]:
        check_report(report)
        if report.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return report
    return None


def newer_report(report: QualityReport) -> QualityReport | None:
    """The newest report of ``report``'s project created after it and not failed (what a page
    polling ``report`` should show instead), recovered first if its worker died."""
    newer = (
        QualityReport.objects.filter(project_id=report.project_id, created_at__gt=report.created_at)
        .exclude(status=JobStatus.FAILED)
        .order_by("-created_at", "-pk")
        .defer("data")
        .first()
    )
    if newer is not None:
        check_report(newer)
    return newer


# --------------------------------------------------------------------------- own accuracy


@dataclass
class OwnAccuracy:
    """What an annotator may see about themself. ``visible`` False: show nothing numeric."""

    enabled: bool
    visible: bool
    accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    computed_at: Any = None
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "visible": self.visible,
            "accuracy": self.accuracy,
            "low": self.low,
            "high": self.high,
            "computed_at": self.computed_at.isoformat() if self.computed_at else None,
            "reason": self.reason,
        }


def annotator_own_accuracy(user, project: Project) -> OwnAccuracy:
    """The annotator's own gold accuracy, if the project shows it and they qualify.

    Shown only when ``project.show_accuracy_after`` is set and the annotator has at least that
    many gold judgments. The figures come from the last stored computation (not recomputed per
    request), rounded to whole percent, and neither the number of gold judgments nor anything
    per item is returned: watching a live count after each answer would reveal which items
    were gold.
    """
    threshold = project.show_accuracy_after
    if threshold is None:
        return OwnAccuracy(
            enabled=False, visible=False, reason="This project does not show accuracy to annotators."
        )
    n_gold = Judgment.objects.filter(
        project=project, annotator=user, comparison__in=GoldAnswer.objects.values("comparison_id")
    ).count()
    q = AnnotatorQuality.objects.filter(project=project, annotator=user).first()
    if n_gold < max(1, threshold) or q is None or q.gold_accuracy is None or q.n_gold < max(1, threshold):
        return OwnAccuracy(
            enabled=True,
            visible=False,
            reason="Your accuracy appears here after you have answered enough calibration items. Keep going!",
        )

    def pct(v):
        return None if v is None else round(float(v), 2)

    return OwnAccuracy(
        enabled=True,
        visible=True,
        accuracy=pct(q.gold_accuracy),
        low=pct(q.gold_accuracy_low),
        high=pct(q.gold_accuracy_high),
        computed_at=q.computed_at,
    )
