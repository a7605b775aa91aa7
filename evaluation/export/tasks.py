"""Celery task that builds a calibrated export (see :mod:`evaluation.export`).

The ``Export`` row is the source of truth. The task takes its id, is safe to deliver twice
(``acks_late``: a worker lost mid-build re-runs it): a built export is left alone (exports
are immutable), anything else is (re)built from scratch into a temporary folder that is
renamed into place only at the end, under a row lock, so a half-written folder is never
visible. Any failure leaves the row *failed* with the reason in ``error``; the task itself
is not retried (the reason is usually the data or the options, which a retry would not fix).
"""

from __future__ import annotations

import logging

from celery import shared_task

from ..models import Export, JobStatus
from .options import ExportError
from .services import BUILD_TASK, build_export, mark_failed

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, name=BUILD_TASK)
def build_export_task(self, export_id: int) -> str:
    """Build export ``export_id``; returns ``succeeded``, ``failed``, ``missing`` or ``skipped (…)``."""
    export = Export.objects.select_related("project").filter(pk=export_id).first()
    if export is None:
        log.info("export %s no longer exists", export_id)
        return "missing"
    if export.status == JobStatus.SUCCEEDED:
        return "skipped (already built)"
    try:
        build_export(export)
    except ExportError as exc:
        mark_failed(export_id, str(exc))
        return "failed"
    except Exception as exc:  # the row says what went wrong
        log.exception("export %s failed", export_id)
        mark_failed(export_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    return "succeeded"
