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

Reports are background jobs of :mod:`prefloop.jobs` (:data:`QUALITY_JOBS`): the task claims the
report, a heartbeat runs while it computes, and every write is fenced to the claim. A report
whose worker died is re-queued (at most :data:`MAX_ATTEMPTS` starts), or failed at once when a
newer report of the project exists (that one covers every judgment it would have); a queued
report whose message is lost is sent again after ``prefloop.jobs.resend_s()``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Project
from prefloop import jobs

from ..models import JobStatus, QualityReport

log = logging.getLogger(__name__)

#: The registered name of the task that computes a queued report.
RECOMPUTE_TASK = "evaluation.recompute_quality"
DEFAULT_DEBOUNCE_S = 30
#: Starts of a report whose worker was lost before it is failed instead of re-run.
MAX_ATTEMPTS = 3


class ReportNotClaimed(Exception):
    """The report is finished, or another live worker is computing it: nothing to do here."""

    def __init__(self, report_id: int, status: str):
        self.status = status
        super().__init__(f"quality report {report_id} is {status}: finished, or computed by another worker")


class QualityJobs(jobs.JobKind):
    """Quality reports as background jobs (see the module docstring). Nothing to clean up: a
    report's rows are written in one transaction at the end."""

    def superseded(self, report: QualityReport) -> str:
        newer = (
            QualityReport.objects.filter(project_id=report.project_id, created_at__gt=report.created_at)
            .exclude(status=JobStatus.FAILED)
            .order_by("-created_at")
            .values_list("pk", flat=True)
            .first()
        )
        return f"superseded by the newer report {newer}" if newer else ""

    def claim_fields(self, report: QualityReport) -> dict:
        return {"progress": 0.0, "message": ""}

    def requeue_fields(self, report: QualityReport) -> dict:
        return {"progress": 0.0, "message": "queued again: its worker was lost"}

    def failed_fields(self, reason: str) -> dict:
        return {"message": reason[:2000]}


QUALITY_JOBS = jobs.register(
    QualityJobs("quality report", QualityReport, RECOMPUTE_TASK, max_attempts=MAX_ATTEMPTS)
)


def check_report(report: QualityReport) -> str:
    """Recover ``report`` (in place) if its worker died or its message was lost; what was done
    (:func:`prefloop.jobs.recover_one`). The dashboard and the API call it on what they show."""
    return jobs.recover_one(QUALITY_JOBS, report)


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
            sent = report.heartbeat_at or report.created_at
            if countdown == 0 or sent < now - timedelta(seconds=jobs.resend_s()):
                QualityReport.objects.filter(pk=report.pk).update(heartbeat_at=now)
                transaction.on_commit(lambda: _send(report.pk, countdown))
            return report
        report = QualityReport.objects.create(
            project_id=project_id, status=JobStatus.QUEUED, heartbeat_at=now  # heartbeat_at: sent at
        )
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
