"""Export services: create an export (validated, queued), enqueue its build, build it, mark
it failed, retry it. See :mod:`evaluation.export` for how a build goes.

Exports are background jobs of :mod:`prefloop.jobs` (:data:`EXPORT_JOBS`): a build claims the
row, keeps a heartbeat, and fences its writes; a build whose worker died has its partial
folders removed and is re-run (at most :data:`MAX_ATTEMPTS` starts, then failed).

The build task is looked up by its registered name (``evaluation.build_export``): the task
module imports this one, never the other way round.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotate.models import Project, Role
from annotate.roles import role_of
from prefloop import jobs

from ..models import Export, JobStatus
from ..stats.jsonsafe import clean_json
from .card import compute_stats, render_card
from .folder import (
    CARD_FILE,
    JUDGMENT_FIELDS,
    METADATA_FILE,
    WEIGHT_RULE,
    default_folder,
    folder_hash,
    make_read_only,
    pair_fields,
)
from .options import ExportError, ExportOptions, clean_options, precheck
from .progress import DatabaseProgress, Progress
from .selection import select
from .writers import pseudonym_key, write_hf, write_judgments, write_pairs

#: The registered name of the Celery task that builds an export.
BUILD_TASK = "evaluation.build_export"
#: Starts of a build whose worker was lost before it is failed instead of re-run.
MAX_ATTEMPTS = 3


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
        heartbeat_at=timezone.now(),  # when its message is sent (prefloop.jobs re-sends a lost one)
    )
    if enqueue:
        enqueue_build(export)
    return export


def enqueue_build(export: Export) -> None:
    """Send the build task after the current transaction commits."""
    export_id = export.pk
    transaction.on_commit(lambda: current_app.tasks[BUILD_TASK].delay(export_id))


def mark_failed(export: Export | int, reason: str) -> None:
    """Record that a queued or failed export cannot be built: status, reason, finish time.

    Never touches a built export, nor one a worker is building (that build ends it itself).
    """
    export_id = export.pk if isinstance(export, Export) else int(export)
    Export.objects.filter(pk=export_id).exclude(status__in=[JobStatus.SUCCEEDED, JobStatus.RUNNING]).update(
        status=JobStatus.FAILED, error=str(reason)[:4000], step="failed", finished_at=timezone.now(), path=""
    )


def retry_export(export: Export) -> bool:
    """Queue a failed export again (a person's retry): a fresh count of attempts, sent after
    the transaction commits. A job whose worker died is first recovered (:mod:`prefloop.jobs`).
    Returns False when the export is not failed (built, queued or being built)."""
    jobs.recover_one(EXPORT_JOBS, export)
    with transaction.atomic():
        updated = Export.objects.filter(pk=export.pk, status=JobStatus.FAILED).update(
            status=JobStatus.QUEUED,
            progress=0.0,
            error="",
            step="queued again",
            finished_at=None,
            attempts=0,
            worker="",
            heartbeat_at=timezone.now(),
            path="",
        )
        if updated:
            enqueue_build(export)
    export.refresh_from_db()
    return bool(updated)


def check_export(export: Export) -> str:
    """Recover ``export`` (in place) if its worker died or its message was lost; what was done
    (:func:`prefloop.jobs.recover_one`). Pages and the API call it on the exports they show."""
    return jobs.recover_one(EXPORT_JOBS, export)


def partial_folders(export: Export) -> list[Path]:
    """What a build of ``export`` that did not finish may have left: its temporary folders, and
    its destination when it is not built (renamed into place just before a crash)."""
    final = Path(export.path) if export.path else default_folder(export)
    found = sorted(final.parent.glob(f".{final.name}.building-*")) if final.parent.is_dir() else []
    if export.status != JobStatus.SUCCEEDED and final.exists():
        found.append(final)
    return found


def remove_partial(export: Export) -> None:
    for folder in partial_folders(export):
        shutil.rmtree(folder, ignore_errors=True)


class ExportJobs(jobs.JobKind):
    """Exports as background jobs: a lost build's folders are removed and the build re-run (up to
    three starts); a redelivered message rebuilds a failed export from scratch."""

    def cleanup(self, export: Export) -> None:
        remove_partial(export)

    def claim_fields(self, export: Export) -> dict:
        return {"progress": 0.0, "error": "", "step": "selecting", "started_at": timezone.now(), "path": ""}

    def requeue_fields(self, export: Export) -> dict:
        return {"progress": 0.0, "step": "queued again: its worker was lost", "path": ""}

    def failed_fields(self, reason: str) -> dict:
        return {"error": reason[:4000], "step": "failed", "path": ""}


EXPORT_JOBS = jobs.register(
    ExportJobs("export", Export, BUILD_TASK, max_attempts=MAX_ATTEMPTS, also_claims=(JobStatus.FAILED,))
)


class NotClaimed(ExportError):
    """The export is built, or another live worker is building it: nothing to do here."""

    def __init__(self, export_id: int, status: str):
        self.status = status
        super().__init__(f"export {export_id} is {status}: built, or being built by another worker")


def build_export(export: Export, *, out_dir: Path | None = None, progress: Progress | None = None) -> Export:
    """Build ``export`` into its folder (``out_dir`` or ``PREFLOOP_EXPORTS_DIR/<id>``).

    Claims the row (:func:`prefloop.jobs.claim`: running, owned by this process, a heartbeat
    while it builds), writes every requested format into a temporary sibling folder, renames it
    into place, records stats, content hash and path, and marks it succeeded -- every write
    fenced to this claim. A built export is never rebuilt (:class:`ExportError`); one that
    another live worker is building raises :class:`NotClaimed`. On failure the row is marked
    failed with the reason, no folder is left behind, and the exception propagates.
    """
    export.refresh_from_db()
    if export.status == JobStatus.SUCCEEDED:
        raise ExportError(f"export {export.pk} is already built and immutable")
    opts = ExportOptions.from_params(export.params)
    final = Path(out_dir) if out_dir is not None else default_folder(export)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and out_dir is not None:
        raise ExportError(f"--out {final} exists and is not empty")
    job = jobs.claim(EXPORT_JOBS, export.pk)
    if job is None:
        export.refresh_from_db()
        raise NotClaimed(export.pk, export.status)
    remove_partial(job)  # a lost earlier attempt's folders (no live worker holds this export now)
    jobs.fenced(job).update(path=str(final))
    job.path = str(final)
    progress = progress or DatabaseProgress(job)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.building-{job.attempts}"
    try:
        with jobs.Heartbeat(job):
            _build(job, opts, tmp, final, out_dir, progress)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        jobs.finish(job, status=JobStatus.FAILED, error=reason[:4000], step="failed", path="",
                    finished_at=timezone.now())
        raise
    finally:
        progress.close()
    export.refresh_from_db()
    return export


def _build(export: Export, opts: ExportOptions, tmp: Path, final: Path, out_dir, progress: Progress) -> None:
    """The build itself (see :func:`build_export`), for a claimed ``export``."""
    timings = {}
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
            "pair_fields": pair_fields(opts.writes_ties),
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
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
    make_read_only(tmp)
    with transaction.atomic():
        row = Export.objects.select_for_update().get(pk=export.pk)
        if not jobs.fenced(export).exists():  # no longer ours (presumed lost and taken over)
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotClaimed(export.pk, row.status)
        if final.exists():
            if out_dir is not None and final.is_dir() and not any(final.iterdir()):
                final.rmdir()
            else:
                shutil.rmtree(final)
        os.replace(tmp, final)
        jobs.finish(
            export,
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
