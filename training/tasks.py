"""Celery tasks of the training app, on the ``gpu`` queue (``CELERY_TASK_ROUTES``) but for the
loop's advance, which only waits and runs the simulated annotators (default queue). Each task
is a thin shell over one function; the tasks call the services, never the other way round (the
services send a task by its registered name, ``current_app.tasks[name]``).

* ``run_training(run_id)`` -- one ``TrainingRun`` start to finish (``training.worker.execute``):
  claims the row, loads the export's rows, trains with callbacks that write progress, metrics
  and logs into the database and read the cancel flag before every step, then registers the
  output ``ModelVersion``. Idempotent and safe to redeliver (``acks_late``): a finished run is
  left alone, a run another live worker holds is skipped, and a run restarted after a crash
  resumes from the last checkpoint in its ``out_dir`` (the trainer replays the same data order).
* ``generate_sample(sample_id)`` -- the run page's "generate" box (``services.sampling``).
* ``sample_round(job_id)`` -- new responses become the next round's comparisons.
* ``training.active.recompute_priorities(job_id)`` -- a project's active pair-selection priorities
  (``training.active.services``); margin jobs are sent to the gpu queue, disagreement jobs to the
  default queue.
* ``training.loop.advance(loop_id)`` -- one step of an unattended loop (``training.loop.service``);
  it sends itself again while the loop waits for a run or a sampling job.

torch, transformers and the trainer are imported inside the tasks, never at module level: the
web process may import this module and must not load them.

When a worker starts (``worker_ready``), and every ``PREFLOOP_JOB_SWEEP_S`` seconds after,
``training.services.runs.resume_stale_runs`` re-queues runs whose worker died mid-run (the
embedded file-system broker does not redeliver a message whose worker was SIGKILLed); see
:mod:`prefloop.jobs`.
"""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_process_init, worker_ready

from prefloop import jobs

from .active import services as _active_services  # noqa: F401 - registers the priority job kind
from .loop import service as loop_service  # noqa: F401 - registers the loop's job kind
from .services import runs, sampling
from .worker.execute import train_run

log = logging.getLogger(__name__)


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    name="training.tasks.run_training",
)
def run_training(self, run_id: int) -> str:
    """Train run ``run_id`` (idempotent; see the module docstring)."""
    return train_run(run_id, getattr(self.request, "id", "") or "")


@shared_task(bind=True, acks_late=True, ignore_result=True, name="training.tasks.generate_sample")
def generate_sample(self, sample_id: int) -> str:
    """Answer a ``GenerationSample``'s prompt with its model."""
    return sampling.answer_sample(sample_id)


@shared_task(bind=True, acks_late=True, ignore_result=True, name="training.tasks.sample_round")
def sample_round(self, job_id: int) -> str:
    """Generate the next round's pairs of a ``SamplingJob`` and import them as comparisons."""
    return sampling.run_queued_round(job_id)


@shared_task(
    bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
    name="training.active.recompute_priorities",
)
def recompute_priorities(self, job_id: int) -> str:
    """Recompute a project's pair priorities (a ``PriorityJob``; idempotent, resumable)."""
    from .active.services import run_priority_job

    return run_priority_job(job_id)


@shared_task(bind=True, acks_late=True, ignore_result=True, name="training.loop.advance")
def advance_loop(self, loop_id: int) -> str:
    """Advance an unattended loop; on the default queue (its name is outside ``training.tasks.*``)."""
    from .loop.service import advance_and_resend

    return advance_and_resend(loop_id)


# =============================================================================================
# Worker start: recover lost runs, warm up the trainer's imports
# =============================================================================================


def _consumes_gpu_queue(app) -> bool:
    try:
        queues = app.amqp.queues.consume_from or app.amqp.queues
        return "gpu" in queues
    except Exception:  # noqa: BLE001
        return False


def _preload_trainer() -> None:
    """Import torch and the trainer ahead of the first task (tens of seconds on a busy CPU)."""
    try:
        from .trainer import loop  # noqa: F401
    except Exception:  # noqa: BLE001 - the task reports a broken install itself
        log.warning("could not preload the trainer", exc_info=True)


def _preload_enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "PREFLOOP_PRELOAD_TRAINER", True))


# Runs a dead worker left 'running' are re-queued (``services.runs.resume_stale_runs``) by the
# recovery of every background job (prefloop.jobs): when a worker starts, and by its sweep.
jobs.register_recoverer("training run", runs.resume_stale_runs)


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    """Warm up the trainer's imports in the background when this worker serves the gpu queue."""
    app = getattr(sender, "app", None)
    if app is not None and _preload_enabled() and _consumes_gpu_queue(app):
        threading.Thread(target=_preload_trainer, name="preload-trainer", daemon=True).start()


@worker_process_init.connect
def _on_worker_process_init(sender=None, **kwargs) -> None:
    """Prefork pool: each child process warms up its own imports."""
    from celery import current_app

    if _preload_enabled() and _consumes_gpu_queue(current_app):
        threading.Thread(target=_preload_trainer, name="preload-trainer", daemon=True).start()
