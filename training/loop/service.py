"""Starting an unattended loop and advancing it one stage at a time.

A ``LoopRun`` moves through its stages; :func:`advance` does what the current stage needs and
returns at once when it waits for the worker:

* ``annotate`` -- the simulated pools (``evaluation.simulated``) judge every open comparison
  through the queue; quality is recomputed (``evaluation.quality.compute.recompute_quality``,
  as its task does); the round's report is written. Then, unless it was the last round, a run
  of ``recipe`` is launched from the latest model on a fresh calibrated export
  (``training.services.runs.launch_run``, the gpu worker trains it).
* ``train`` -- when the run has succeeded, its model's samples are queued as the next round
  (``training.services.sampling.queue_sample_round``, the worker generates them), paired as
  this round's pairing says.
* ``sample`` -- when the sampling job has succeeded, the next round is annotated.

``manage.py loop`` calls :func:`advance` in a loop in its own process (the simulated annotators
work there; training and sampling on the worker); the API sends ``training.loop.advance``, a
task on the default queue that advances and sends itself again while the loop waits.

A loop is a background job of :mod:`prefloop.jobs` (docs/jobs.md). Each :func:`advance` claims
the row (owner, one more attempt), beats while the stage runs and writes only while it still
owns the row (fenced), then releases it: *queued* again, ``heartbeat_at`` = this poll, attempts
back to 0 (they count the starts in a row whose process died). So two callers never do a stage
at the same time, and a loop whose process died is taken up by the next claim -- the sweep's
re-queue and re-send, or the 600 s re-send of a queued loop whose poller died -- from its current
stage: ``train`` and ``sample`` only poll (the sampling job is queued in the same transaction as
the move to ``sample``, and the round's run is launched in the same transaction as the move to
``train``, its fresh export recorded on the loop before, so a retry reuses it and never launches a
second run); ``annotating`` resumes after the judging when it had ended (the
round's truth is saved with ``report["annotated"]``), and otherwise fails the loop (the judgments
of the killed session are in the database but the simulator's record of them is lost, so the
round's report would be wrong). A loop lost :data:`MAX_ATTEMPTS` times in a row is failed.
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotate.models import Project
from evaluation.models import Export
from evaluation.models import JobStatus as ExportStatus
from evaluation.quality.compute import recompute_quality
from evaluation.simulated import annotate, enroll
from evaluation.stats.simulation import DEFAULT_POOLS, KeywordUtility, PoolSpec, draw_annotators

from prefloop import jobs

from ..models import JobStatus, LoopRun, LoopStage, ModelVersion, Pairing, Recipe, RunStatus, TrainingRun
from ..services.errors import TrainingError
from ..services.hyperparameters import validate_hyperparameters
from ..services.rows import build_fresh_export, discard_export
from ..services.runs import launch_run
from ..services.sampling import _must_generate, queue_sample_round
from . import report as reports

log = logging.getLogger(__name__)

#: The task that advances a loop started from the API (default queue: it only waits and judges).
ADVANCE_TASK = "training.loop.advance"
#: Seconds between two advances of a waiting loop.
POLL_S = 2.0
#: Recipes a loop can run: they turn preferences into a language model that samples.
LOOP_RECIPES = (Recipe.SFT_DPO, Recipe.DPO, Recipe.SFT, Recipe.SFT_DPO_PPO)
#: Starts in a row whose process died after which a loop is failed instead of resumed.
MAX_ATTEMPTS = 3


def lost_judging(loop: LoopRun) -> str:
    """Why a loop whose process died cannot resume ("" = it can): killed while the simulated
    annotators were judging."""
    if loop.stage == LoopStage.ANNOTATING and (loop.report or {}).get("annotated", {}).get("round") != loop.round:
        return (f"it was stopped while the simulated annotators were judging round {loop.round}; their judgments "
                "so far are kept but the simulator's record of them is lost, so the round cannot be resumed; "
                "start a new loop")
    return ""


class _LoopJobs(jobs.JobKind):
    def superseded(self, job: LoopRun) -> str:
        return lost_judging(job) if job.status == JobStatus.RUNNING else ""

    def failed_fields(self, reason: str) -> dict:
        return {"error": reason[:2000], "message": "failed"}

    def requeue_fields(self, job: LoopRun) -> dict:
        return {"message": f"{job.message} (resumed: its process was lost)"[:300]}


LOOP_JOBS = jobs.register(_LoopJobs("unattended loop", LoopRun, ADVANCE_TASK, max_attempts=MAX_ATTEMPTS))


class _NotOurs(Exception):
    """The row no longer names this claim (the loop was presumed dead and taken over)."""


def _pools(pools) -> list[PoolSpec]:
    if not pools:
        return list(DEFAULT_POOLS)
    try:
        return [p if isinstance(p, PoolSpec) else PoolSpec.from_dict(p) for p in pools]
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"pools: {exc}", "pools") from None


def _utility(fields: dict | None) -> KeywordUtility:
    fields = dict(fields or {})
    for key in ("good", "bad", "known"):
        if key in fields:
            fields[key] = frozenset(w.lower() for w in fields[key])
    try:
        return KeywordUtility(**fields)
    except TypeError as exc:
        raise TrainingError(f"utility: {exc}", "utility") from None


def _utility_json(u: KeywordUtility) -> dict:
    return {
        "good": sorted(u.good), "bad": sorted(u.bad), "length_penalty": u.length_penalty,
        "free_words": u.free_words, "known": sorted(u.known), "unknown_penalty": u.unknown_penalty,
    }


def start_loop(
    project: Project,
    *,
    base_model: ModelVersion,
    rounds: int = 1,
    recipe: str = Recipe.SFT_DPO,
    pairings: list[str] | None = None,
    reference_model: ModelVersion | None = None,
    pools: list | None = None,
    utility: dict | KeywordUtility | None = None,
    hyperparameters: dict | None = None,
    n_prompts: int = 20,
    max_new_tokens: int = 24,
    temperature: float = 0.8,
    seed: int = 0,
    user=None,
    send: bool = True,
) -> LoopRun:
    """Validate and create a loop (nothing is created on a ``TrainingError``, which names the
    field); with ``send`` its first advance is queued on the default queue."""
    if not 1 <= int(rounds) <= 50:
        raise TrainingError("rounds must be between 1 and 50", "rounds")
    if recipe not in LOOP_RECIPES:
        raise TrainingError(f"recipe must be one of {', '.join(LOOP_RECIPES)}", "recipe")
    if base_model is None:
        raise TrainingError("choose a base model", "base_model")
    _must_generate(base_model)
    pairings = list(pairings or [Pairing.HEAD_TO_HEAD])
    unknown = [p for p in pairings if p not in Pairing.values]
    if unknown:
        raise TrainingError(f"unknown pairing {unknown[0]!r}: expected one of {', '.join(Pairing.values)}", "pairings")
    specs = _pools(pools)
    u = utility if isinstance(utility, KeywordUtility) else _utility(utility)
    hp = validate_hyperparameters(hyperparameters, recipe)
    if not 1 <= int(n_prompts) <= 10_000:
        raise TrainingError("n_prompts must be between 1 and 10000", "n_prompts")
    if not project.comparisons.exists():
        raise TrainingError("the project has no comparisons for the first round to judge", "project")
    loop = LoopRun.objects.create(
        project=project,
        base_model=base_model,
        reference_model=reference_model or base_model,
        latest_model=base_model,
        recipe=recipe,
        rounds=int(rounds),
        pairings=pairings,
        pools=[dataclasses.asdict(p) for p in specs],
        utility=_utility_json(u),
        hyperparameters=hp,
        n_prompts=int(n_prompts),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        seed=int(seed),
        round=project.current_round,
        status=JobStatus.QUEUED,
        heartbeat_at=timezone.now(),  # when its first advance is sent (prefloop.jobs re-sends a lost one)
        created_by=user,
        report={"rounds": [], "start_round": project.current_round},
    )
    if send:
        transaction.on_commit(lambda: current_app.tasks[ADVANCE_TASK].delay(loop.pk))
    return loop


def pairing_for(loop: LoopRun, index: int) -> str:
    """The pairing of the ``index``-th sampled round of the loop (0-based; the last repeats)."""
    return loop.pairings[min(index, len(loop.pairings) - 1)]


def _fail(loop: LoopRun, message: str) -> None:
    jobs.finish(loop, status=JobStatus.FAILED, error=message[:2000], message="failed", finished_at=timezone.now())


def _set(loop: LoopRun, **fields) -> None:
    """Write ``fields`` while this claim still owns the loop (fenced), else stop the stage."""
    if not jobs.fenced(loop).update(**fields):
        raise _NotOurs()
    for k, v in fields.items():
        setattr(loop, k, v)


def check(loop: LoopRun) -> str:
    """Recover ``loop`` if its process died (:func:`prefloop.jobs.recover_one`); the API calls it
    on the loops it shows."""
    return jobs.recover_one(LOOP_JOBS, loop)


def polled(loop_id: int) -> None:
    """A follower (``manage.py loop``) still polls this waiting loop: its heartbeat is fresh, so
    the sweep does not send it to a worker."""
    LoopRun.objects.filter(pk=loop_id, status=JobStatus.QUEUED).update(heartbeat_at=timezone.now())


def advance(loop_id: int, *, on_judgment=None) -> bool:
    """Claim the loop and do the current stage's work if it is ready; True when the loop moved on
    (or ended), False when it waits for the worker or another process holds it. A failed run or
    sampling job fails the loop with its error."""
    if jobs.claim(LOOP_JOBS, loop_id) is None:
        return False
    loop = LoopRun.objects.select_related("project", "latest_model", "reference_model").get(pk=loop_id)
    moved = False
    try:
        with jobs.Heartbeat(loop):
            if reason := lost_judging(loop):
                raise TrainingError(f"its process was lost: {reason}")
            if loop.stage in (LoopStage.ANNOTATE, LoopStage.ANNOTATING):
                moved = _annotate_stage(loop, on_judgment)
            elif loop.stage == LoopStage.TRAIN:
                moved = _train_stage(loop)
            elif loop.stage == LoopStage.SAMPLE:
                moved = _sample_stage(loop)
    except _NotOurs:
        return False
    except TrainingError as exc:
        _fail(loop, exc.message)
        return True
    except Exception as exc:  # noqa: BLE001 - the row says what went wrong
        log.exception("loop %s failed", loop_id)
        _fail(loop, f"{type(exc).__name__}: {exc}")
        return True
    if loop.status == JobStatus.RUNNING:  # release it: queued until the next poll claims it
        jobs.finish(loop, status=JobStatus.QUEUED, worker="", heartbeat_at=timezone.now(), attempts=0)
    return moved


def _annotate_stage(loop: LoopRun, on_judgment) -> bool:
    project = loop.project
    utility = _utility(loop.utility)
    if loop.stage == LoopStage.ANNOTATE:
        _set(loop, stage=LoopStage.ANNOTATING, message=f"round {loop.round}: simulated annotators judging")
        _judge(loop, utility, on_judgment)
    # else: resumed after the judging had ended (lost_judging checked it)
    session = SimpleNamespace(**loop.report["annotated"])
    _set(loop, message=f"round {loop.round}: recomputing quality")
    recompute_quality(project)
    entry = reports.round_report(project, loop.round, loop.truth, utility, session)
    report = dict(loop.report)
    report["rounds"] = [r for r in report.get("rounds", []) if r["round"] != loop.round] + [entry]
    last = loop.round >= report.get("start_round", 0) + loop.rounds
    if last:
        if not jobs.finish(loop, report=report, stage=LoopStage.DONE, status=JobStatus.SUCCEEDED, message="done",
                           finished_at=timezone.now()):
            raise _NotOurs()
        loop.status = JobStatus.SUCCEEDED
        return True
    _set(loop, report=report, message=f"round {loop.round}: training {loop.recipe} from {loop.latest_model.name}")
    _launch_round_run(loop)
    return True


def _launch_round_run(loop: LoopRun) -> TrainingRun:
    """Launch the round's run and record it on the loop in one transaction, so that a process
    killed between the two leaves neither: the redelivered advance (``annotating``, judging done)
    launches the round's one run again, never a second. The fresh export is built first, outside
    that transaction (it takes a while and writes files), and its id is recorded on the loop
    (``report["launch"]``, the round's intent) before the launch, so the retry reuses it instead of
    building another; an export the launch refuses (or a claim lost meanwhile) is discarded."""
    intent = (loop.report or {}).get("launch") or {}
    export = None
    if intent.get("round") == loop.round:
        export = Export.objects.filter(pk=intent.get("export"), project=loop.project,
                                       status=ExportStatus.SUCCEEDED).first()
    if export is None:
        export = build_fresh_export(loop.project, loop.created_by)
        try:
            _set(loop, report={**loop.report, "launch": {"round": loop.round, "export": export.pk}})
        except _NotOurs:
            discard_export(export)
            raise
    try:
        with transaction.atomic():
            run = launch_run(
                loop.project, base_model=loop.latest_model, recipe=loop.recipe, export=export,
                hyperparameters=loop.hyperparameters, created_by=loop.created_by,
            )
            _set(loop, current_run=run, stage=LoopStage.TRAIN)
    except (TrainingError, _NotOurs):
        discard_export(export)
        raise
    return run


def _judge(loop: LoopRun, utility: KeywordUtility, on_judgment) -> None:
    """The simulated annotators judge the round; their truth, the clock and the round's counts
    (``report["annotated"]``, the mark that judging ended) are saved in one write."""
    people = draw_annotators(_pools(loop.pools), seed=loop.seed)
    team = enroll(loop.project, people)
    session = annotate(
        loop.project, team, utility=utility, start=loop.clock or timezone.now(), seed=loop.seed + loop.round,
        progress=on_judgment,
    )
    truth = dict(loop.truth)
    for w in session.workers:
        t = truth.setdefault(
            w.username,
            {"user_id": w.user_id, "pool": w.person.pool, "accuracy": w.person.accuracy,
             "left_bias": w.person.left_bias, "length_bias": w.person.length_bias, "seconds": w.person.seconds,
             "decided": 0, "right": 0, "judgments": 0, "left_clicks": 0, "abandoned": 0},
        )
        for key in ("decided", "right", "judgments", "left_clicks", "abandoned"):
            t[key] += getattr(w, key)
    _set(loop, clock=session.ended, truth=truth, report={**loop.report, "annotated": {
        "round": loop.round, "judgments": session.judgments, "abandoned": session.abandoned}})


def _train_stage(loop: LoopRun) -> bool:
    run = TrainingRun.objects.select_related("output_model").get(pk=loop.current_run_id)
    if not run.is_finished:
        return False
    if run.status != RunStatus.SUCCEEDED or run.output_model is None:
        raise TrainingError(f"run {run.pk} {run.status}: {run.error or 'no output model'}")
    index = loop.round - loop.report.get("start_round", 0)
    pairing = pairing_for(loop, index)
    with transaction.atomic():  # the job exists (and is sent) only if the loop records it
        job = queue_sample_round(
            loop.project, run.output_model, n_prompts=loop.n_prompts, pairing=pairing,
            compare_to=loop.reference_model, run=run, user=loop.created_by, max_new_tokens=loop.max_new_tokens,
            temperature=loop.temperature, seed=loop.seed + loop.round,
        )
        _set(loop, latest_model=run.output_model, current_job=job, stage=LoopStage.SAMPLE,
             message=f"round {job.round}: sampling ({pairing})")
    return True


def _sample_stage(loop: LoopRun) -> bool:
    job = loop.current_job
    job.refresh_from_db()
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return False
    if job.status != JobStatus.SUCCEEDED:
        raise TrainingError(f"sampling job {job.pk} {job.status}: {job.error}")
    _set(loop, round=job.round, stage=LoopStage.ANNOTATE, message=f"round {job.round}: to annotate")
    return True


def advance_and_resend(loop_id: int) -> str:
    """The ``training.loop.advance`` task: advance while there is work, then send itself again
    (after ``POLL_S``) while the loop waits for the worker (a loop another process holds is left
    to it; the sweep re-sends it if that process dies). Returns the loop's status."""
    while advance(loop_id):
        pass
    loop = LoopRun.objects.get(pk=loop_id)
    if loop.status == JobStatus.QUEUED:
        LOOP_JOBS.send(loop_id, countdown=POLL_S)
    return loop.status
