"""Scheduling quality recomputations: the debounced queue of ``QualityReport`` rows.

The report row is the source of truth: :func:`schedule_recompute` creates a ``QualityReport``
in state *queued* and, once the transaction commits, sends its id to the Celery task
``evaluation.recompute_quality`` (:mod:`evaluation.quality.tasks`, looked up by that name:
the task imports the services, never the other way round). The task moves the report to
*running* → *succeeded*/*failed*.

Debouncing: a project has at most one *queued* report. New judgments while one is queued
add nothing (the queued run will see them); new judgments while one is *running* queue the
next one, so the last judgment is always covered. The countdown
(``settings.PREFLOOP_QUALITY_DEBOUNCE_S``, default 30 s) lets a burst of judgments collapse
into one computation.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Project

from ..models import JobStatus, QualityReport

log = logging.getLogger(__name__)

#: The registered name of the task that computes a queued report.
RECOMPUTE_TASK = "evaluation.recompute_quality"
DEFAULT_DEBOUNCE_S = 30
#: A queued report older than this is re-sent (its message may have been lost).
STALE_QUEUED_S = 600


def debounce_seconds() -> int:
    return int(getattr(settings, "PREFLOOP_QUALITY_DEBOUNCE_S", DEFAULT_DEBOUNCE_S))


def auto_quality_enabled() -> bool:
    return bool(getattr(settings, "PREFLOOP_AUTO_QUALITY", True))


def _send(report_id: int, countdown: int) -> None:
    current_app.tasks[RECOMPUTE_TASK].apply_async((report_id,), countdown=max(0, int(countdown)))


def schedule_recompute(project: Project | int, *, countdown: int | None = None) -> QualityReport:
    """Queue a recomputation of ``project``'s quality, debounced; returns the queued report.

    If a report is already queued it is reused (and re-sent when ``countdown`` is 0, so
    "Recompute now" does not wait for the debounce, or when it has waited suspiciously long).
    The Celery message is sent after the surrounding transaction commits.
    """
    project_id = project.pk if isinstance(project, Project) else int(project)
    countdown = debounce_seconds() if countdown is None else countdown
    now = timezone.now()
    with transaction.atomic():
        # Serializes schedulers of one project (PostgreSQL row lock; SQLite writes are serial).
        Project.objects.select_for_update().filter(pk=project_id).values_list("pk", flat=True).first()
        queued = QualityReport.objects.filter(project_id=project_id, status=JobStatus.QUEUED).order_by(
            "-created_at"
        )
        report = queued.first()
        if report is not None:
            resend = countdown == 0 or report.created_at < now - timedelta(seconds=STALE_QUEUED_S)
            if resend:
                transaction.on_commit(lambda: _send(report.pk, countdown))
            return report
        report = QualityReport.objects.create(project_id=project_id, status=JobStatus.QUEUED)
        transaction.on_commit(lambda: _send(report.pk, countdown))
    return report


def schedule_quietly(project_id: int) -> None:
    """:func:`schedule_recompute` for callers that must not fail (a judgment, an admin
    action): a broker hiccup is logged, never raised."""
    try:
        schedule_recompute(project_id)
    except Exception:
        log.exception("could not schedule a quality recomputation for project %s", project_id)


def schedule_after_judgment(project_id: int) -> None:
    """``transaction.on_commit`` target of the Judgment signal: best effort, never raises."""
    if not auto_quality_enabled():
        return
    # Fast path, one indexed read and no lock: a queued report will already see this judgment.
    if QualityReport.objects.filter(project_id=project_id, status=JobStatus.QUEUED).exists():
        return
    schedule_quietly(project_id)
