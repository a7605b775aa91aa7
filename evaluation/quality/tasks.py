"""The Celery task that computes a queued quality report (scheduled by
:mod:`evaluation.quality.scheduling`).

The report row is the source of truth; the task takes its id. Re-delivering the message
(``acks_late``, a worker lost mid-run, a second "Recompute now" click) is harmless: a report
that is no longer queued is left alone, so each report is computed at most once.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from ..models import JobStatus, QualityReport
from .compute import recompute_quality
from .scheduling import RECOMPUTE_TASK

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, ignore_result=True, name=RECOMPUTE_TASK)
def recompute_quality_task(self, report_id: int) -> str:
    """Compute the quality report ``report_id`` (idempotent; see the module docstring)."""
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
