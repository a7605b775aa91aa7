"""The Celery task that computes a queued quality report (scheduled by
:mod:`evaluation.quality.scheduling`).

The report row is the source of truth; the task takes its id. Re-delivering the message
(``acks_late``, a re-send of a lost message, a second "Recompute now" click) is harmless: the
task claims the report (:func:`prefloop.jobs.claim`), so a finished report, or one another live
worker is computing, is left alone. A report whose worker died mid-way is claimed again (or
failed when a newer report supersedes it; see :mod:`evaluation.quality.scheduling`).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from prefloop import jobs

from ..models import JobStatus, QualityReport
from .compute import recompute_quality
from .scheduling import QUALITY_JOBS, RECOMPUTE_TASK, ReportNotClaimed

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, name=RECOMPUTE_TASK)
def recompute_quality_task(self, report_id: int) -> str:
    """Compute the quality report ``report_id`` (idempotent; see the module docstring)."""
    report = jobs.claim(QUALITY_JOBS, report_id)
    if report is None:
        status = QualityReport.objects.filter(pk=report_id).values_list("status", flat=True).first()
        if status is None:
            log.info("quality report %s no longer exists", report_id)
            return "missing"
        return f"skipped ({status})"
    try:
        recompute_quality(report.project, report=report)
    except ReportNotClaimed as exc:
        return f"skipped ({exc.status})"
    except Exception as exc:  # the row says what went wrong; the task itself is not retried
        log.exception("quality report %s failed", report_id)
        jobs.finish(
            report,
            status=JobStatus.FAILED,
            message=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
        return "failed"
    return "succeeded"
