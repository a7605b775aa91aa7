"""The life of a training run: launch (validate everything that needs no torch, create, queue),
cancel, the log lines, and the worker side's claim, heartbeat and recovery of runs whose worker
died -- with the owner and staleness rules every background job shares (:mod:`prefloop.jobs`);
a run keeps its own recovery policy (re-queued to resume from its last checkpoint).

A run is sent to the gpu queue by the task's registered name once the launching transaction
commits; ``training.tasks`` calls into this module, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotate.models import Project
from evaluation.models import Export
from evaluation.models import JobStatus as ExportStatus
from prefloop import jobs

from ..models import ModelKind, ModelVersion, Recipe, RunStatus, TrainingRun
from .errors import TrainingError
from .hyperparameters import validate_hyperparameters
from .registry import validate_model_folder
from .rows import build_fresh_export, check_rows, discard_export, export_rows

#: A running run whose heartbeat is older than this (seconds) is considered lost.
DEFAULT_HEARTBEAT_STALE_S = jobs.DEFAULT_STALE_S
#: Seconds between heartbeats written by the worker while a run is running.
HEARTBEAT_INTERVAL_S = jobs.HEARTBEAT_INTERVAL_S
#: Runs keep this many characters of log (the tail).
LOG_MAX_CHARS = 100_000
#: The Celery task that trains a run (``training.tasks.run_training``), on the gpu queue.
RUN_TASK = "training.tasks.run_training"


def runs_dir() -> Path:
    return Path(settings.PREFLOOP_RUNS_DIR)


def launch_run(
    project: Project,
    *,
    base_model: ModelVersion,
    recipe: str = Recipe.SFT_DPO,
    export: Export | None = None,
    hyperparameters: dict | None = None,
    created_by=None,
    export_params: dict | None = None,
    send: bool = True,
) -> TrainingRun:
    """Validate everything that can be checked without torch, create the run and queue it.

    ``export=None`` builds a fresh export of the project first (synchronously). Raises
    ``TrainingError`` (nothing created) on: unknown or invalid hyperparameters, a base model
    whose folder is missing or unusable, an export of another project or not built, an export
    with fewer pairs than ``min_pairs`` (or weights worth fewer). Long prompts are truncated by the
    trainer, never refused (``training.data.prompt_keep``).
    """
    hp = validate_hyperparameters(hyperparameters, recipe)
    if base_model is None:
        raise TrainingError("choose a base model", "base_model")
    validate_model_folder(base_model.path)
    check_reward_model(recipe, base_model, hp, project)
    fresh = export is None
    if export is not None:
        if export.project_id != project.pk:
            raise TrainingError(f"export {export.pk} belongs to another project", "export")
        if export.status != ExportStatus.SUCCEEDED:
            raise TrainingError(
                f"export {export.pk} is {export.status}, not built; wait for it or pick another", "export"
            )
    else:
        export = build_fresh_export(project, created_by, export_params)
    try:
        train, test = export_rows(export, include_ties=bool(hp.get("use_soft_labels")))
        stats = check_rows(train, test, hp, recipe)
    except TrainingError:
        if fresh:
            discard_export(export)
        raise
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project,
            export=export,
            recipe=recipe,
            base_model=base_model,
            hyperparameters=hp,
            created_by=created_by,
            status=RunStatus.QUEUED,
            summary={"data": {**stats.as_dict(), "test_pairs": len(test)}},
            logs=_stamp(
                f"queued: {recipe} on export {export.pk} ({len(train)} train / {len(test)} test pairs, "
                f"{_weights_line(stats)}), base {base_model.name}"
            ),
        )
        run.out_dir = str((runs_dir() / f"run-{run.pk:05d}").resolve())
        run.save(update_fields=["out_dir"])
        if send:
            transaction.on_commit(lambda: send_run(run.pk))
    return run


def _weights_line(stats) -> str:
    if not stats.weighted:
        return "weights not used: every pair counts 1"
    return f"weight sum {stats.weight_sum:.3g}, effective sample size {stats.effective_size:.1f}"


def check_reward_model(
    recipe: str, base_model: ModelVersion, hp: dict, project: Project | None = None
) -> ModelVersion | None:
    """The RLHF checks a launch can make without torch: the base is a language model; recipe
    ``ppo`` names a registered reward model (``hp["reward_model"]``) shared by all projects or
    belonging to ``project``, which must share the base's tokenizer (PPO feeds the policy's token
    ids to it). Returns that reward model."""
    from ..rlhf import tokenizer_problem

    if base_model.kind == ModelKind.REWARD:
        raise TrainingError(f"{base_model.name} is a reward model: it scores, it does not generate; choose a "
                            f"language model as the base", "base_model")
    name = hp.get("reward_model")
    if not name:
        if recipe == Recipe.PPO:
            raise TrainingError("recipe ppo needs a reward model: choose a registered reward model (the output "
                                "of an rm run), or run sft+rm+ppo to train one", "reward_model")
        return None
    if recipe not in (Recipe.PPO, Recipe.SFT_DPO_PPO):
        raise TrainingError(f"a reward model is used by the recipes ppo and sft+dpo+ppo, not {recipe}",
                            "reward_model")
    models = ModelVersion.objects.all()
    if project is not None:
        models = models.filter(Q(project__isnull=True) | Q(project=project))
    rm = models.filter(name=name).first()
    if rm is None:
        raise TrainingError(f"no registered model is named {name!r}", "reward_model")
    if rm.kind != ModelKind.REWARD:
        raise TrainingError(f"{name} is a language model, not a reward model", "reward_model")
    validate_model_folder(rm.path)
    problem = tokenizer_problem(base_model.path, rm.path)
    if problem:
        raise TrainingError(f"the reward model {name}'s tokenizer differs from {base_model.name}'s ({problem}); "
                            f"PPO scores the policy's tokens directly, so train the reward model from the same "
                            f"base model", "reward_model")
    return rm


def send_run(run_id: int) -> None:
    """Queue the Celery task of run ``run_id`` on the gpu queue and remember its task id."""
    result = current_app.tasks[RUN_TASK].apply_async((run_id,))
    TrainingRun.objects.filter(pk=run_id).update(celery_task_id=result.id or "")


def cancel_run(run: TrainingRun, user=None) -> TrainingRun:
    """Ask the run to stop. A queued run is cancelled at once; a running one stops before its
    next step and keeps its last checkpoint (the worker saves one when it sees the flag)."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            raise TrainingError(f"run {run.pk} has already {run.status}")
        who = f" by {user.get_username()}" if user is not None and user.is_authenticated else ""
        run.cancel_requested = True
        fields = ["cancel_requested", "logs", "updated_at"]
        if run.status == RunStatus.QUEUED and run.attempts == 0:
            run.status = RunStatus.CANCELLED
            run.finished_at = timezone.now()
            run.eta_seconds = None
            fields += ["status", "finished_at", "eta_seconds"]
            run.logs = append_log(run.logs, f"cancelled before it started{who}")
        else:
            run.logs = append_log(run.logs, f"cancel requested{who}; stopping before the next step")
        run.save(update_fields=fields)
    return run


def _stamp(message: str) -> str:
    return f"[{timezone.now().strftime('%Y-%m-%d %H:%M:%S')}] {message}"


def log_expression(message: str):
    """An UPDATE expression appending a stamped line to ``logs`` in the database itself (one
    atomic statement, so the worker and the web process never overwrite each other's lines),
    keeping the last ``LOG_MAX_CHARS`` characters."""
    from django.db.models import F, Value
    from django.db.models.functions import Concat, Right

    line = "\n" + _stamp(message)
    return Right(Concat(F("logs"), Value(line)), LOG_MAX_CHARS)


def append_run_log(run_id: int, message: str, **fields) -> None:
    """Append a line to run ``run_id``'s logs (and set ``fields``) in one UPDATE."""
    TrainingRun.objects.filter(pk=run_id).update(
        logs=log_expression(message), updated_at=timezone.now(), **fields
    )


def append_log(logs: str, message: str) -> str:
    text = (logs + "\n" if logs else "") + _stamp(message)
    if len(text) > LOG_MAX_CHARS:
        text = text[-LOG_MAX_CHARS:]
        text = text[text.find("\n") + 1 :]
    return text


def worker_id() -> str:
    return jobs.worker_id()


def owner_is_dead(run: TrainingRun, now=None) -> bool:
    """The run's worker is gone (:func:`prefloop.jobs.owner_is_dead`, with the runs' own stale
    limit): its heartbeat is stale, or it ran on this host under a pid that no longer exists."""
    return jobs.owner_is_dead(run, now, stale=heartbeat_stale_s())


def heartbeat_stale_s() -> int:
    return int(getattr(settings, "PREFLOOP_RUN_HEARTBEAT_STALE_S", jobs.stale_s()))


def claim_run(run_id: int, task_id: str = "") -> TrainingRun | None:
    """Mark the run as running on this worker, or return None when it must not run here:
    missing, finished, cancelled while queued, or running on another live worker."""
    now = timezone.now()
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.is_finished:
            return None
        if run.cancel_requested and run.status == RunStatus.QUEUED and run.attempts == 0:
            run.status = RunStatus.CANCELLED
            run.finished_at = now
            run.save(update_fields=["status", "finished_at", "updated_at"])
            return None
        if run.status == RunStatus.RUNNING and not owner_is_dead(run, now):
            return None
        resumed = run.attempts > 0
        run.status = RunStatus.RUNNING
        run.worker = worker_id()
        run.heartbeat_at = now
        run.attempts += 1
        run.started_at = run.started_at or now
        if task_id:
            run.celery_task_id = task_id
        run.logs = append_log(
            run.logs,
            f"{'restarted' if resumed else 'started'} on worker {run.worker} (attempt {run.attempts})",
        )
        run.save(
            update_fields=[
                "status",
                "worker",
                "heartbeat_at",
                "attempts",
                "started_at",
                "celery_task_id",
                "logs",
                "updated_at",
            ]
        )
    return run


def resume_stale_runs(*, send: bool = True) -> list[int]:
    """Re-queue runs left 'running' by a worker that died (stale heartbeat, or a dead pid on
    this host). Called when a worker starts (Celery's ``worker_ready`` signal) and by
    ``manage.py train --resume-stale``. The task then resumes from the last checkpoint.

    Brokers without redelivery of unacknowledged messages after a crash (the embedded
    file-system broker loses a message its worker had taken) need this; with Redis or RabbitMQ
    the redelivered message and this re-queue meet in ``claim_run``, so the run still runs once.
    """
    now = timezone.now()
    requeued = []
    for run in TrainingRun.objects.filter(status=RunStatus.RUNNING).only("pk", "worker", "heartbeat_at"):
        if not owner_is_dead(run, now):
            continue
        with transaction.atomic():
            fresh = TrainingRun.objects.select_for_update().get(pk=run.pk)
            if fresh.status != RunStatus.RUNNING or not owner_is_dead(fresh, now):
                continue
            fresh.status = RunStatus.QUEUED
            fresh.logs = append_log(
                fresh.logs, f"worker {fresh.worker} was lost; re-queued to resume from the last checkpoint"
            )
            fresh.save(update_fields=["status", "logs", "updated_at"])
        requeued.append(run.pk)
        if send:
            send_run(run.pk)
    return requeued
