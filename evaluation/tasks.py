"""Celery tasks for annotator quality, and the debounced scheduler that queues them.

The report row is the source of truth: ``schedule_recompute`` creates a ``QualityReport`` in
state *queued* and sends its id; the task moves it to *running* → *succeeded*/*failed* and
writes progress into it as it goes. Re-delivering the message (``acks_late``, a worker lost
mid-run, a second "Recompute now" click) is harmless: a report that is no longer queued is
left alone, so each report is computed at most once.

Debouncing: a project has at most one *queued* report. New judgments while one is queued
add nothing (the queued run will see them); new judgments while one is *running* queue the
next one, so the last judgment is always covered. The countdown
(``settings.PREFLOOP_QUALITY_DEBOUNCE_S``, default 30 s) lets a burst of judgments collapse
into one computation.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Project

from .models import JobStatus, QualityReport

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 30
#: A queued report older than this is re-sent (its message may have been lost).
STALE_QUEUED_S = 600
#: A running report not updated for this long is considered crashed and may be replaced.
STALE_RUNNING_S = 3600


def debounce_seconds() -> int:
    return int(getattr(settings, "PREFLOOP_QUALITY_DEBOUNCE_S", DEFAULT_DEBOUNCE_S))


def auto_quality_enabled() -> bool:
    return bool(getattr(settings, "PREFLOOP_AUTO_QUALITY", True))


@shared_task(bind=True, acks_late=True, ignore_result=True, name="evaluation.recompute_quality")
def recompute_quality_task(self, report_id: int) -> str:
    """Compute the quality report ``report_id`` (idempotent; see the module docstring)."""
    from .services import recompute_quality

    with transaction.atomic():
        report = (
            QualityReport.objects.select_for_update().filter(pk=report_id).select_related("project").first()
        )
        if report is None:
            log.info("quality report %s no longer exists", report_id)
            return "missing"
        if report.status != JobStatus.QUEUED:
            return f"skipped ({report.status})"
        report.status = JobStatus.RUNNING
        report.progress = 0.0
        report.message = ""
        report.save(update_fields=["status", "progress", "message"])
    try:
        recompute_quality(report.project, report=report)
    except Exception as exc:  # the row says what went wrong; the task itself is not retried
        log.exception("quality report %s failed", report_id)
        QualityReport.objects.filter(pk=report_id).update(
            status=JobStatus.FAILED, message=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        return "failed"
    return "succeeded"


def _send(report_id: int, countdown: int) -> None:
    recompute_quality_task.apply_async((report_id,), countdown=max(0, int(countdown)))


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


def schedule_after_judgment(project_id: int) -> None:
    """``transaction.on_commit`` target of the Judgment signal: best effort, never raises."""
    if not auto_quality_enabled():
        return
    # Fast path, one indexed read and no lock: a queued report will already see this judgment.
    if QualityReport.objects.filter(project_id=project_id, status=JobStatus.QUEUED).exists():
        return
    try:
        schedule_recompute(project_id)
    except Exception:  # a broker hiccup must not break judging
        log.exception("could not schedule a quality recomputation for project %s", project_id)
