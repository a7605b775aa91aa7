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
task on the default queue that advances and sends itself again while the loop waits. A stage is
claimed by an update of its row, so two callers never do the same stage twice.
"""

from __future__ import annotations

import dataclasses
import logging

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotate.models import Project
from evaluation.quality.compute import recompute_quality
from evaluation.simulated import annotate, enroll
from evaluation.stats.simulation import DEFAULT_POOLS, KeywordUtility, PoolSpec, draw_annotators

from ..models import JobStatus, LoopRun, LoopStage, ModelVersion, Pairing, Recipe, RunStatus, TrainingRun
from ..services.errors import TrainingError
from ..services.hyperparameters import validate_hyperparameters
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
    LoopRun.objects.filter(pk=loop.pk).update(
        status=JobStatus.FAILED, error=message[:2000], message="failed", finished_at=timezone.now()
    )


def _set(loop: LoopRun, **fields) -> None:
    for k, v in fields.items():
        setattr(loop, k, v)
    LoopRun.objects.filter(pk=loop.pk).update(**fields)


def advance(loop_id: int, *, on_judgment=None) -> bool:
    """Do the current stage's work if it is ready; True when the loop moved on (or ended), False
    when it waits for the worker. A failed run or sampling job fails the loop with its error."""
    loop = LoopRun.objects.select_related("project", "latest_model", "reference_model").get(pk=loop_id)
    if loop.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return False
    if loop.status == JobStatus.QUEUED:
        _set(loop, status=JobStatus.RUNNING)
    try:
        if loop.stage == LoopStage.ANNOTATE:
            return _annotate_stage(loop, on_judgment)
        if loop.stage == LoopStage.TRAIN:
            return _train_stage(loop)
        if loop.stage == LoopStage.SAMPLE:
            return _sample_stage(loop)
    except TrainingError as exc:
        _fail(loop, exc.message)
        return True
    except Exception as exc:  # noqa: BLE001 - the row says what went wrong
        log.exception("loop %s failed", loop_id)
        _fail(loop, f"{type(exc).__name__}: {exc}")
        return True
    return False


def _annotate_stage(loop: LoopRun, on_judgment) -> bool:
    if not LoopRun.objects.filter(pk=loop.pk, stage=LoopStage.ANNOTATE).update(stage=LoopStage.ANNOTATING):
        return False  # another caller has it
    project = loop.project
    utility = _utility(loop.utility)
    people = draw_annotators(_pools(loop.pools), seed=loop.seed)
    team = enroll(project, people)
    _set(loop, message=f"round {loop.round}: simulated annotators judging")
    session = annotate(
        project, team, utility=utility, start=loop.clock or timezone.now(), seed=loop.seed + loop.round,
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
    _set(loop, message=f"round {loop.round}: recomputing quality", clock=session.ended, truth=truth)
    recompute_quality(project)
    entry = reports.round_report(project, loop.round, truth, utility, session)
    report = dict(loop.report)
    report["rounds"] = [r for r in report.get("rounds", []) if r["round"] != loop.round] + [entry]
    last = loop.round >= report.get("start_round", 0) + loop.rounds
    if last:
        _set(loop, report=report, stage=LoopStage.DONE, status=JobStatus.SUCCEEDED, message="done",
             finished_at=timezone.now())
        return True
    _set(loop, report=report, message=f"round {loop.round}: training {loop.recipe} from {loop.latest_model.name}")
    run = launch_run(
        project, base_model=loop.latest_model, recipe=loop.recipe, hyperparameters=loop.hyperparameters,
        created_by=loop.created_by,
    )
    _set(loop, current_run=run, stage=LoopStage.TRAIN)
    return True


def _train_stage(loop: LoopRun) -> bool:
    run = TrainingRun.objects.select_related("output_model").get(pk=loop.current_run_id)
    if not run.is_finished:
        return False
    if run.status != RunStatus.SUCCEEDED or run.output_model is None:
        raise TrainingError(f"run {run.pk} {run.status}: {run.error or 'no output model'}")
    index = loop.round - loop.report.get("start_round", 0)
    pairing = pairing_for(loop, index)
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
    (after ``POLL_S``) while the loop waits for the worker. Returns the loop's status."""
    while advance(loop_id):
        pass
    loop = LoopRun.objects.get(pk=loop_id)
    if loop.status in (JobStatus.QUEUED, JobStatus.RUNNING) and loop.stage != LoopStage.ANNOTATING:
        current_app.tasks[ADVANCE_TASK].apply_async((loop_id,), countdown=POLL_S)
    return loop.status
