"""Export services: create an export (validated, queued), enqueue its build, build it, mark
it failed. See :mod:`evaluation.export` for how a build goes.

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
#: A temporary build folder untouched this long belongs to a killed worker and is removed.
STALE_BUILD_S = 6 * 3600


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
    )
    if enqueue:
        enqueue_build(export)
    return export


def enqueue_build(export: Export) -> None:
    """Send the build task after the current transaction commits."""
    export_id = export.pk
    transaction.on_commit(lambda: current_app.tasks[BUILD_TASK].delay(export_id))


def mark_failed(export: Export | int, reason: str) -> None:
    """Record a failed build (never over a built export): status, reason, finish time."""
    export_id = export.pk if isinstance(export, Export) else int(export)
    Export.objects.filter(pk=export_id).exclude(status=JobStatus.SUCCEEDED).update(
        status=JobStatus.FAILED, error=str(reason)[:4000], step="failed", finished_at=timezone.now()
    )


def build_export(export: Export, *, out_dir: Path | None = None, progress: Progress | None = None) -> Export:
    """Build ``export`` into its folder (``out_dir`` or ``PREFLOOP_EXPORTS_DIR/<id>``).

    Marks the row running, writes every requested format into a temporary sibling folder,
    renames it into place, records stats, content hash and path, and marks it succeeded.
    A built export is never rebuilt (:class:`ExportError`). Raises on failure, leaving no
    folder behind; the caller marks the row failed (:func:`mark_failed`).
    """
    export.refresh_from_db()
    if export.status == JobStatus.SUCCEEDED:
        raise ExportError(f"export {export.pk} is already built and immutable")
    progress = progress or DatabaseProgress(export)
    opts = ExportOptions.from_params(export.params)
    final = Path(out_dir) if out_dir is not None else default_folder(export)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and out_dir is not None:
        raise ExportError(f"--out {final} exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.building-*"):  # left by a worker that was killed
        if time.time() - stale.stat().st_mtime > STALE_BUILD_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.building-{secrets.token_hex(4)}"
    Export.objects.filter(pk=export.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), progress=0.0, error="", step="selecting"
    )
    timings = {}
    try:
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
        (tmp / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        make_read_only(tmp)
        with transaction.atomic():
            row = Export.objects.select_for_update().get(pk=export.pk)
            if row.status == JobStatus.SUCCEEDED:  # a duplicate delivery finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return row
            if final.exists():
                if out_dir is not None and final.is_dir() and not any(final.iterdir()):
                    final.rmdir()
                else:
                    shutil.rmtree(final)
            os.replace(tmp, final)
            Export.objects.filter(pk=export.pk).update(
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
    export.refresh_from_db()
    return export
