"""Celery task that builds a calibrated export (see :mod:`evaluation.export`).

The ``Export`` row is the source of truth. The task takes its id and is safe to deliver twice
(``acks_late``; see :mod:`prefloop.jobs`): a built export is left alone (exports are
immutable), one that another live worker is building is skipped, anything else is (re)built
from scratch into a temporary folder that is renamed into place only at the end, so a
half-written folder is never visible. A failure leaves the row *failed* with the reason in
``error``; the task itself is not retried (the reason is usually the data or the options, which
a retry would not fix). A worker lost mid-build is recovered by :mod:`prefloop.jobs`: its partial
folder is removed and the build re-run.
"""

from __future__ import annotations

import logging

from celery import shared_task

from ..models import Export, JobStatus
from .options import ExportError
from .services import BUILD_TASK, NotClaimed, build_export

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
    except NotClaimed as exc:
        return f"skipped ({exc.status})"
    except ExportError:
        return "failed"  # the row says why
    except Exception:
        log.exception("export %s failed", export_id)
        return "failed"
    return "succeeded"
