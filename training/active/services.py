"""Active pair selection: queuing and running the priority computation of a project.

A project whose ``pair_order`` is ``margin``, ``information`` or ``disagreement`` is served by
``Comparison.priority`` (higher first, after the queue's pool balance; ``annotate.queue``). A
``PriorityJob`` recomputes the priorities of its open regular comparisons
(:mod:`training.active.scoring`) on a worker:

* **When.** When an admin sets an active order (``annotate.signals.pair_order_changed``); on
  demand ("Recompute priorities" on the settings page, ``POST /api/projects/{id}/priorities/``);
  for ``margin`` and ``information`` after every succeeded training run and every sampled round
  of the project (new comparisons, new model); for ``disagreement`` after every succeeded
  statistics recomputation (new votes). A project has at most one *queued* job: asking again
  while one is queued returns it.
* **Where.** The task ``training.active.recompute_priorities``: ``margin`` and ``information``
  jobs go to the ``gpu`` queue (they load two models; on a CPU-only worker they run batched on
  the CPU), ``disagreement`` jobs to the default queue.
* **How.** The job is a background job of :mod:`prefloop.jobs` (claim, heartbeat, fenced
  writes, recovery of a job whose worker died). It walks the open comparisons in id order, a
  chunk at a time (an ``information`` job first scores them all: its order is global), and
  writes each chunk's priorities with its progress and ``cursor`` in one transaction
  (:mod:`training.active.writes`), so a job taken up again after its worker died continues
  after the last chunk written. A margin job records the model version it uses when
  it first starts and keeps it on resumption. Recomputing gives the same priorities.
* **Stops.** A job stops (failed, with the reason) when the project's order changes under it
  (``set_pair_order`` has zeroed the priorities; the new order's job recomputes them) or a newer
  job of the project exists.
* **Arrival order** needs no job: ``set_pair_order`` sets every priority to 0.
"""

from __future__ import annotations

import logging

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotate.models import PairOrder, Project
from prefloop import jobs

from ..models import JobStatus, PriorityJob

log = logging.getLogger(__name__)

#: The task that runs a job (``training.tasks``); outside ``training.tasks.*``, so not routed to
#: the gpu queue by name: :meth:`PriorityJobs.send` chooses the queue by the job's order.
TASK = "training.active.recompute_priorities"
#: Comparisons scored per chunk (one write and one progress update each).
MARGIN_CHUNK = 512
DISAGREEMENT_CHUNK = 5000
#: Orders computed from the project's latest DPO model (loaded on a ``gpu`` worker).
MODEL_ORDERS = (PairOrder.MARGIN, PairOrder.INFORMATION)


def margin_sampling_power() -> float | None:
    """``settings.PREFLOOP_MARGIN_SAMPLING_POWER``: None serves the margin priorities in strict
    order; a number ``p`` serves them by :func:`evaluation.stats.active.sampled_priority`
    (comparisons drawn with probability ∝ priority^p)."""
    from django.conf import settings

    value = getattr(settings, "PREFLOOP_MARGIN_SAMPLING_POWER", None)
    return None if value is None or value == "" else float(value)


class PriorityJobs(jobs.JobKind):
    def send(self, pk: int, countdown: int = 0) -> None:
        order = PriorityJob.objects.filter(pk=pk).values_list("pair_order", flat=True).first()
        queue = "gpu" if order in MODEL_ORDERS else None
        current_app.tasks[self.task].apply_async((pk,), countdown=max(0, int(countdown)), queue=queue)

    def superseded(self, job: PriorityJob) -> str:
        return _superseded(job)

    def failed_fields(self, reason: str) -> dict:
        return {"error": reason[:2000], "message": "failed"}

    def requeue_fields(self, job: PriorityJob) -> dict:
        return {"message": "queued again: its worker was lost; it continues after the last chunk written"}


PRIORITY_JOBS = jobs.register(PriorityJobs("priority job", PriorityJob, TASK, max_attempts=3))


def _superseded(job: PriorityJob) -> str:
    order = Project.objects.filter(pk=job.project_id).values_list("pair_order", flat=True).first()
    if order != job.pair_order:
        return f"the project's pair order changed to {order!r}"
    newer = (
        PriorityJob.objects.filter(project_id=job.project_id, pk__gt=job.pk)
        .exclude(status=JobStatus.FAILED)
        .values_list("pk", flat=True)
        .first()
    )
    return f"superseded by the newer job {newer}" if newer else ""


# --------------------------------------------------------------------------- asking for a job


def request_priorities(project: Project, *, reason: str = "on demand", user=None, send: bool = True
                       ) -> PriorityJob | None:
    """Queue a recomputation of ``project``'s priorities for its current pair order (None for
    arrival order: there is nothing to compute). While one is queued, that one is returned."""
    with transaction.atomic():
        order = (
            Project.objects.select_for_update().filter(pk=project.pk).values_list("pair_order", flat=True).get()
        )
        project.pair_order = order
        if order == PairOrder.ARRIVAL:
            return None
        queued = PriorityJob.objects.filter(project=project, status=JobStatus.QUEUED, pair_order=order).first()
        if queued is not None:
            return queued
        job = PriorityJob.objects.create(
            project=project, pair_order=order, reason=reason[:200], created_by=user,
            heartbeat_at=timezone.now(),  # when its message is sent (prefloop.jobs re-sends a lost one)
        )
        if send:
            transaction.on_commit(lambda: PRIORITY_JOBS.send(job.pk))
    return job


def request_quietly(project_id: int, orders: tuple[str, ...], reason: str) -> None:
    """:func:`request_priorities` for a project in one of ``orders``, from a hook that must not
    fail (a finished run or report): anything wrong is logged, never raised."""
    try:
        project = Project.objects.filter(pk=project_id, pair_order__in=orders).first()
        if project is not None:
            request_priorities(project, reason=reason)
    except Exception:  # noqa: BLE001
        log.exception("could not queue the priorities of project %s", project_id)


def after_run_succeeded(run) -> None:
    """A training run succeeded: a model-ordered project's priorities follow its new model."""
    request_quietly(run.project_id, MODEL_ORDERS, f"training run {run.pk} succeeded")


def after_round_sampled(job) -> None:
    """A sampled round added comparisons: a model-ordered project scores them."""
    request_quietly(job.project_id, MODEL_ORDERS, f"sampling job {job.pk} added round {job.round}")


def on_comparisons_imported(sender, project, count, **kwargs) -> None:
    """Receiver of ``annotate.signals.comparisons_imported``: a project in an active order scores
    its new comparisons (until then they wait at priority 0, after the scored ones)."""
    active = (*MODEL_ORDERS, PairOrder.DISAGREEMENT)
    request_quietly(project.pk, active, f"{count} comparison{'s' if count != 1 else ''} imported")


def on_pair_order_changed(sender, project, old, new, user=None, **kwargs) -> None:
    """Receiver of ``annotate.signals.pair_order_changed``."""
    if new != PairOrder.ARRIVAL:
        try:
            request_priorities(project, reason=f"pair order set to {new}", user=user)
        except Exception:  # noqa: BLE001 - the order is set; "Recompute priorities" retries
            log.exception("could not queue the priorities of project %s", project.pk)


def on_quality_report_saved(sender, instance, update_fields=None, **kwargs) -> None:
    """``post_save`` of a quality report: when it has just succeeded, a disagreement project's
    priorities follow the new votes."""
    if instance.status == JobStatus.SUCCEEDED and (update_fields is None or "status" in update_fields):
        project_id = instance.project_id
        transaction.on_commit(
            lambda: request_quietly(project_id, (PairOrder.DISAGREEMENT,), f"statistics report {instance.pk}")
        )


def latest_job(project: Project) -> PriorityJob | None:
    """The project's newest job, recovered first if its worker died (:func:`prefloop.jobs.recover_one`)."""
    job = PriorityJob.objects.filter(project=project).select_related("model_version").order_by("-pk").first()
    if job is not None and jobs.recover_one(PRIORITY_JOBS, job):
        job = PriorityJob.objects.select_related("model_version").get(pk=job.pk)
    return job


# --------------------------------------------------------------------------- the worker's side


def run_priority_job(job_id: int, *, progress_bar: bool = True) -> str:
    """The task: claim job ``job_id``, compute and write its priorities chunk by chunk, record
    the outcome. Returns "succeeded", "failed", "stopped" or "skipped" (not claimable)."""
    from .writes import Stop

    job = jobs.claim(PRIORITY_JOBS, job_id)
    if job is None:
        return "skipped"
    try:
        with jobs.Heartbeat(job):
            if reason := _superseded(job):
                raise Stop(reason)
            if job.pair_order == PairOrder.MARGIN:
                message = _run_margin(job, progress_bar)
            elif job.pair_order == PairOrder.INFORMATION:
                message = _run_information(job, progress_bar)
            else:
                message = _run_disagreement(job)
    except Stop as exc:
        jobs.finish(job, status=JobStatus.FAILED, error=f"stopped: {exc}", message="stopped",
                    finished_at=timezone.now())
        return "stopped"
    except Exception as exc:  # noqa: BLE001 - the row says what went wrong
        log.exception("priority job %s failed", job_id)
        jobs.finish(job, status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], message="failed",
                    finished_at=timezone.now())
        return "failed"
    jobs.finish(job, status=JobStatus.SUCCEEDED, progress=1.0, message=message[:500], finished_at=timezone.now())
    return "succeeded"


def _total(job: PriorityJob) -> int:
    """Open regular comparisons still to score (after the cursor) plus those already done."""
    from .scoring import open_regular

    return job.n_done + open_regular(job.project_id, job.cursor).count()


NO_MODEL = "no model trained with DPO yet: every priority stays 0 (arrival order) until the first one"


def _job_model(job: PriorityJob):
    """The :class:`~training.active.scoring.MarginModel` a model-ordered job scores with: the one
    it recorded when it first started, else the project's latest (recorded now); None when the
    project has no DPO model yet."""
    from ..models import ModelVersion
    from .scoring import margin_model
    from .writes import Stop

    version = ModelVersion.objects.filter(pk=job.model_version_id).first() if job.model_version_id else None
    if job.model_version_id and version is None:
        raise Stop("the model version it started with was deleted")
    mm = margin_model(job.project, version)
    if mm is not None and job.model_version_id is None:
        if not jobs.fenced(job).update(model_version=mm.version):
            raise Stop("another worker took the job over")
        job.model_version = mm.version
    return mm


def _run_margin(job: PriorityJob, progress_bar: bool) -> str:
    from tqdm import tqdm

    from evaluation.stats.active import sampled_priority, stable_uniform

    from .scoring import MarginScorer, open_regular, pair_rows
    from .writes import write_chunk

    mm = _job_model(job)
    if mm is None:
        return NO_MODEL
    power = margin_sampling_power()
    scorer = MarginScorer(mm)
    total = _total(job)
    jobs.fenced(job).update(n_total=total)
    bar = tqdm(total=total, initial=job.n_done, desc=f"priorities (margin, job {job.pk})", unit="pair",
               disable=not progress_bar, mininterval=1.0)
    try:
        while True:
            chunk = pair_rows(open_regular(job.project_id, job.cursor)[:MARGIN_CHUNK])
            if not chunk:
                break
            ids = [pk for pk, _ in chunk]
            prio, unscored = scorer.priorities([row for _, row in chunk])
            if power is not None:
                prio = sampled_priority(prio, stable_uniform(mm.version.pk, ids), power)
            job.n_done += len(ids)
            job.n_unscored += unscored
            job.cursor = ids[-1]
            write_chunk(job, ids, prio.tolist(), n_done=job.n_done, n_unscored=job.n_unscored, cursor=job.cursor,
                        progress=min(1.0, job.n_done / max(total, 1)))
            bar.update(len(ids))
    finally:
        bar.close()
    unscored = f"; {job.n_unscored} could not be scored (priority 0)" if job.n_unscored else ""
    return f"{job.n_done} comparisons scored by the margins of {mm.version.name} (β {mm.beta:g}){unscored}"


def _run_information(job: PriorityJob, progress_bar: bool) -> str:
    """Expected information (:func:`evaluation.stats.active.information_priority`): the features
    and Fisher weights of every judged pair (one entry per vote) and of every open regular pair
    under the job's model, then the greedy order over all of them at once, written chunk by chunk.
    The order needs every open pair before the first write, so a job taken up again recomputes
    it (the same model and votes give the same priorities) and writes after its cursor."""
    import numpy as np
    from tqdm import tqdm

    from evaluation.stats.active import fisher_weight, information_priority

    from .scoring import MarginScorer, judged_regular, open_regular, rows_by_id
    from .writes import Stop, write_chunk

    mm = _job_model(job)
    if mm is None:
        return NO_MODEL
    scorer = MarginScorer(mm)
    judged = judged_regular(job.project_id)
    ids = list(open_regular(job.project_id).values_list("pk", flat=True))
    total = len(judged) + 2 * len(ids)  # score the judged and open pairs, then write the open ones
    if not jobs.fenced(job).update(n_total=len(ids)):
        raise Stop("another worker took the job over")
    bar = tqdm(total=total, desc=f"priorities (information, job {job.pk})", unit="pair",
               disable=not progress_bar, mininterval=1.0)

    def scored(pks):
        """Features, Fisher weights and scoreability of comparisons ``pks`` (in chunks)."""
        x, w, ok = [], [], []
        for start in range(0, len(pks), MARGIN_CHUNK):
            part = pks[start:start + MARGIN_CHUNK]
            rows = rows_by_id(part)
            # a comparison deleted since it was listed: an empty row, which cannot be scored
            lp, good, feats = scorer.score([row or {"prompt": "", "chosen": "", "rejected": ""} for row in rows],
                                           features=True)
            x.append(feats)
            w.append(np.where(good, fisher_weight(scorer.margins(lp)), 0.0))
            ok += good
            bar.update(len(part))
            if not jobs.fenced(job).update(progress=min(0.5, 0.5 * bar.n / max(total, 1))):
                raise Stop("another worker took the job over")
        width = scorer.feature_dim
        return (np.concatenate(x) if x else np.zeros((0, width))), (np.concatenate(w) if w else np.zeros(0)), ok

    try:
        judged_ids = sorted(judged)
        xj, wj, _ = scored(judged_ids)
        wj = wj * np.array([judged[pk] for pk in judged_ids], dtype=float)  # a pair voted k times: k votes
        x, w, ok = scored(ids)
        prio = information_priority(x, w, xj, wj)
        unscored = len(ok) - int(sum(ok))
        start = int(np.searchsorted(np.asarray(ids, dtype=np.int64), job.cursor, side="right"))
        bar.update(start)
        for begin in range(start, len(ids), MARGIN_CHUNK):
            part = ids[begin:begin + MARGIN_CHUNK]
            job.n_done = begin + len(part)
            job.n_unscored = unscored
            job.cursor = part[-1]
            write_chunk(job, part, prio[begin:begin + len(part)].tolist(), n_done=job.n_done,
                        n_unscored=unscored, cursor=job.cursor,
                        progress=0.5 + 0.5 * job.n_done / max(len(ids), 1))
            bar.update(len(part))
    finally:
        bar.close()
    unscored = f"; {job.n_unscored} could not be scored (priority 0)" if job.n_unscored else ""
    return (f"{len(ids)} comparisons ordered by the expected information of a vote under {mm.version.name} "
            f"(β {mm.beta:g}; {len(judged)} judged pairs known){unscored}")


def _run_disagreement(job: PriorityJob) -> str:
    from .scoring import disagreement_priorities, open_regular
    from .writes import write_chunk

    by_comparison, neutral = disagreement_priorities(job.project)
    ids = list(open_regular(job.project_id, job.cursor).values_list("pk", flat=True))
    total = job.n_done + len(ids)
    jobs.fenced(job).update(n_total=total)
    measured = 0
    for start in range(0, len(ids), DISAGREEMENT_CHUNK):
        part = ids[start:start + DISAGREEMENT_CHUNK]
        values = [by_comparison.get(pk, neutral) for pk in part]
        job.n_done += len(part)
        job.cursor = part[-1]
        write_chunk(job, part, values, n_done=job.n_done, cursor=job.cursor,
                    progress=min(1.0, job.n_done / max(total, 1)))
        measured += sum(pk in by_comparison for pk in part)
    return (f"{job.n_done} comparisons scored by the pools' disagreement ({measured} with votes; "
            f"the others get the neutral value {neutral:.3f})")
