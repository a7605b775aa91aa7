"""Signal handlers: a new (or changed) judgment schedules a (debounced) quality recomputation.

Connected in :meth:`evaluation.apps.EvaluationConfig.ready`. The Celery message goes out
only after the judgment's transaction commits (``transaction.on_commit``), so the worker
always sees the row; with ``settings.PREFLOOP_AUTO_QUALITY = False`` the handler does
nothing. Bulk writes (``bulk_create``, e.g. imports) send no ``post_save``: their callers
should call :func:`evaluation.quality.scheduling.schedule_recompute` once when they are done.
"""

from __future__ import annotations

from functools import partial

from django.db import transaction

from .scheduling import auto_quality_enabled, schedule_after_judgment


def judgment_saved(sender, instance, created: bool, raw: bool = False, update_fields=None, **kwargs) -> None:
    # A new judgment, or one its annotator changed (annotate.revisions saves "choice").
    changed = created or (update_fields is not None and "choice" in update_fields)
    if not changed or raw or not auto_quality_enabled():
        return
    transaction.on_commit(partial(schedule_after_judgment, instance.project_id))


def judgments_imported(sender, project, count: int, **kwargs) -> None:
    if count and auto_quality_enabled():
        transaction.on_commit(partial(schedule_after_judgment, project.pk))


def gold_changed(sender, project, **kwargs) -> None:
    # sent once the change committed (annotate.gold): accuracies against the new answers
    if auto_quality_enabled():
        schedule_after_judgment(project.pk)
