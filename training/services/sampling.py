"""Samples from trained models: one prompt answered on the run page, and the next annotation round
(new responses from the new model and its parent, imported as comparisons of round N+1).

Queuing happens in the web process (the task is sent by its registered name after commit);
``answer_sample``, ``run_queued_round`` and ``run_sampling_job`` run in the worker, the only place
models are loaded (``training.worker.generation``, imported when called).
"""

from __future__ import annotations

import io
import json
import logging
import random

from celery import current_app
from django.db import transaction
from django.utils import timezone

from annotate.models import Project, Prompt
from prefloop import jobs

from ..models import GenerationSample, JobStatus, ModelKind, ModelVersion, Pairing, SamplingJob, TrainingRun
from .errors import TrainingError

#: The Celery tasks these jobs run in (``training.tasks``), on the gpu queue.
SAMPLE_TASK = "training.tasks.generate_sample"
ROUND_TASK = "training.tasks.sample_round"

log = logging.getLogger(__name__)

#: Samples and sampling jobs are background jobs of :mod:`prefloop.jobs`: claimed, a heartbeat
#: while the model generates, fenced writes. One whose worker died is run again once (generation
#: is cheap, and a round's import is transactional and de-duplicated), then failed.
class _RoundJobs(jobs.JobKind):
    def requeue_fields(self, job: SamplingJob) -> dict:
        return {"progress": 0.0}


SAMPLE_JOBS = jobs.register(jobs.JobKind("generation sample", GenerationSample, SAMPLE_TASK, max_attempts=2))
ROUND_JOBS = jobs.register(_RoundJobs("sampling job", SamplingJob, ROUND_TASK, max_attempts=2))


def _must_generate(model_version: ModelVersion) -> None:
    if model_version.kind == ModelKind.REWARD:
        raise TrainingError(f"{model_version.name} is a reward model: it scores responses, it does not write them")


def request_sample(
    model_version: ModelVersion,
    prompt: str,
    *,
    run: TrainingRun | None = None,
    user=None,
    max_new_tokens: int = 48,
    send: bool = True,
) -> GenerationSample:
    """Queue a generation from ``model_version`` (answered by a worker task, polled by the page)."""
    _must_generate(model_version)
    prompt = (prompt or "").strip()
    if not prompt:
        raise TrainingError("type a prompt", "prompt")
    if len(prompt) > 4000:
        raise TrainingError("the prompt is longer than 4000 characters", "prompt")
    if not 1 <= int(max_new_tokens) <= 512:
        raise TrainingError("max_new_tokens must be between 1 and 512", "max_new_tokens")
    sample = GenerationSample.objects.create(
        model_version=model_version,
        run=run,
        prompt=prompt,
        max_new_tokens=int(max_new_tokens),
        created_by=user,
        heartbeat_at=timezone.now(),  # when its message is sent (prefloop.jobs re-sends a lost one)
    )
    if send:
        transaction.on_commit(lambda: current_app.tasks[SAMPLE_TASK].delay(sample.pk))
    return sample


def answer_sample(sample_id: int) -> str:
    """The ``generate_sample`` task, on the worker: claim the queued sample, answer its prompt
    greedily with its model, record the text or the error. Returns "succeeded", "failed" or
    "skipped" (already taken)."""
    from ..worker.generation import generate_texts

    if jobs.claim(SAMPLE_JOBS, sample_id) is None:
        return "skipped"
    sample = GenerationSample.objects.select_related("model_version").get(pk=sample_id)
    try:
        with jobs.Heartbeat(sample):
            text = generate_texts(
                sample.model_version.path, [sample.prompt], 1, sample.max_new_tokens, temperature=0.0
            )[0][0]
    except Exception as exc:  # noqa: BLE001
        log.exception("sample %s failed", sample_id)
        jobs.finish(
            sample, status=JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        return "failed"
    jobs.finish(sample, status=JobStatus.SUCCEEDED, output=text, finished_at=timezone.now())
    return "succeeded"


#: The sampling form's and API's "compare against" choices, as pairings.
AGAINST = {"parent": Pairing.HEAD_TO_HEAD, "self": Pairing.TWO_SAMPLES, "model": Pairing.REFERENCE}


def resolve_pairing(
    model_version: ModelVersion, pairing: str | None = None, compare_to: ModelVersion | None | str = "parent"
) -> tuple[str, ModelVersion | None]:
    """(pairing, the other side's model or None for two samples).

    ``pairing``: ``head_to_head`` (the new model against the one it was trained from; an error
    when it has none), ``two_samples``, or ``reference`` (against ``compare_to``, a fixed
    model version). Without ``pairing`` the older ``compare_to`` alone decides: ``"parent"``
    (two samples when there is no parent), ``None`` (two samples) or a model version."""
    if pairing is not None and pairing not in Pairing.values:
        raise TrainingError(f"unknown pairing {pairing!r}: expected one of {', '.join(Pairing.values)}", "pairing")
    if pairing == Pairing.HEAD_TO_HEAD:
        if model_version.parent is None:
            raise TrainingError(
                f"{model_version.name} has no previous model to compare with; choose two samples or a reference",
                "pairing",
            )
        other = model_version.parent
    elif pairing == Pairing.TWO_SAMPLES:
        other = None
    elif pairing == Pairing.REFERENCE:
        if not isinstance(compare_to, ModelVersion):
            raise TrainingError("choose the reference model version to compare against", "compare_model")
        other = compare_to
    else:
        other = model_version.parent if compare_to == "parent" else compare_to
    if other is not None:
        _must_generate(other)
        if other.pk == model_version.pk:
            other = None
    if other is None:
        return Pairing.TWO_SAMPLES, None
    if pairing is None:
        pairing = Pairing.HEAD_TO_HEAD if other.pk == model_version.parent_id else Pairing.REFERENCE
    return pairing, other


def queue_sample_round(
    project: Project,
    model_version: ModelVersion,
    *,
    n_prompts: int = 20,
    compare_to: ModelVersion | None | str = "parent",
    pairing: str | None = None,
    run: TrainingRun | None = None,
    user=None,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
    send: bool = True,
) -> SamplingJob:
    """Queue ``sample_round``: new responses from ``model_version`` for ``n_prompts`` prompts of
    ``project`` become round ``project.current_round + 1`` comparisons, paired as
    :func:`resolve_pairing` says (``pairing`` head_to_head / two_samples / reference, or the
    older ``compare_to``)."""
    _must_generate(model_version)
    pairing, compare_to = resolve_pairing(model_version, pairing, compare_to)
    if not 1 <= int(n_prompts) <= 10_000:
        raise TrainingError("n_prompts must be between 1 and 10000", "n_prompts")
    if not Prompt.objects.filter(project=project).exists():
        raise TrainingError("the project has no prompts to sample from", "n_prompts")
    job = SamplingJob.objects.create(
        project=project,
        model_version=model_version,
        compare_to=compare_to,
        pairing=pairing,
        run=run,
        n_prompts=int(n_prompts),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        seed=int(seed),
        round=project.current_round + 1,
        created_by=user,
        heartbeat_at=timezone.now(),  # when its message is sent (prefloop.jobs re-sends a lost one)
    )
    if send:
        transaction.on_commit(lambda: current_app.tasks[ROUND_TASK].delay(job.pk))
    return job


def _choose_prompts(project: Project, n: int, seed: int) -> list[Prompt]:
    ids = list(Prompt.objects.filter(project=project).order_by("pk").values_list("pk", flat=True))
    rng = random.Random(seed)
    rng.shuffle(ids)
    chosen = ids[:n]
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def sample_next_round(
    source: TrainingRun | ModelVersion,
    project: Project | None = None,
    n_prompts: int = 20,
    *,
    generate=None,
    **options,
) -> SamplingJob:
    """Sample the next round now, in this process (a worker, a shell or a command; it loads the
    models): new responses from ``source`` (a succeeded run's output model, or a model version)
    for ``n_prompts`` prompts of ``project`` become round ``current_round + 1`` comparisons.
    ``options`` are :func:`queue_sample_round`'s. Returns the finished ``SamplingJob``."""
    run = source if isinstance(source, TrainingRun) else None
    version = run.output_model if run is not None else source
    if version is None:
        raise TrainingError("the run has no output model to sample from")
    project = project or (run.project if run is not None else version.project)
    if project is None:
        raise TrainingError("name the project to sample into")
    job = queue_sample_round(project, version, n_prompts=n_prompts, run=run, send=False, **options)
    job = jobs.claim(ROUND_JOBS, job.pk)  # held by this process while it generates
    with jobs.Heartbeat(job):
        _record_outcome(job, lambda: run_sampling_job(job, generate=generate))
    job.refresh_from_db()
    return job


def run_queued_round(job_id: int) -> str:
    """The ``sample_round`` task, on the worker: claim the queued ``SamplingJob`` (a redelivered
    message finds it taken and does nothing), run it, record the outcome in its row. Returns
    "succeeded", "failed" or "skipped"."""
    if jobs.claim(ROUND_JOBS, job_id) is None:
        return "skipped"
    job = SamplingJob.objects.select_related("project", "model_version", "compare_to").get(pk=job_id)

    def progress(fraction: float) -> None:
        jobs.fenced(job).update(progress=fraction)

    try:
        with jobs.Heartbeat(job):
            _record_outcome(job, lambda: run_sampling_job(job, progress=progress))
    except Exception:  # noqa: BLE001 - the row says what went wrong
        log.exception("sampling job %s failed", job_id)
        return "failed"
    return "succeeded"


def _record_outcome(job: SamplingJob, work) -> int:
    """Run ``work()`` (returns the comparisons created) and write the outcome into the claimed
    job's row (fenced): failed with the error (re-raised), or succeeded with the count (the
    dropped pairs are counted in the row by ``run_sampling_job`` itself)."""
    try:
        created = work()
    except Exception as exc:
        jobs.finish(job, status=JobStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now())
        raise
    if jobs.finish(job, status=JobStatus.SUCCEEDED, n_created=created, progress=1.0, finished_at=timezone.now()):
        from ..active.services import after_round_sampled

        after_round_sampled(job)  # a project in margin order scores the new comparisons
    return created


def run_sampling_job(job: SamplingJob, generate=None, progress=None) -> int:
    """Generate the job's responses and import them as the next round's comparisons.

    Runs in the worker (``training.tasks.sample_round``): ``generate(model_path, prompts,
    num_return_sequences, max_new_tokens, temperature, seed)`` returns a list (per prompt) of
    lists of strings; by default ``training.worker.generation.generate_texts`` (torch).
    Responses get ``model_name`` = the version's name and ``round`` = ``job.round``; comparisons are written by
    ``annotate.imports.import_comparisons`` (validated, de-duplicated, transactional). Pairs with
    an empty response or two identical ones are dropped and counted in the job's row
    (``n_empty``, ``n_identical``), as are pairs the round already has (``n_existing``). Returns the comparisons created; the
    project's ``current_round`` moves to ``job.round``.
    """
    from annotate.imports import import_comparisons

    if generate is None:
        from ..worker.generation import generate_texts as generate

    project = job.project
    prompts = _choose_prompts(project, job.n_prompts, job.seed)
    inputs = [p.messages if p.messages else p.text for p in prompts]
    new_model = job.model_version
    if job.compare_to is not None:
        outs_a = generate(new_model.path, inputs, 1, job.max_new_tokens, job.temperature, job.seed)
        if progress:
            progress(0.5)
        outs_b = generate(job.compare_to.path, inputs, 1, job.max_new_tokens, job.temperature, job.seed)
        pairs = [(a[0], b[0]) for a, b in zip(outs_a, outs_b)]
        model_b = job.compare_to.name
    else:
        outs = generate(new_model.path, inputs, 2, job.max_new_tokens, job.temperature, job.seed)
        pairs = [(o[0], o[1]) for o in outs]
        model_b = new_model.name
    if progress:
        progress(0.9)
    lines, dropped = pair_lines(job, prompts, pairs, new_model.name, model_b)
    SamplingJob.objects.filter(pk=job.pk).update(n_empty=dropped["empty"], n_identical=dropped["identical"])
    if not lines:
        raise TrainingError(
            f"every sampled pair was dropped ({dropped['empty']} with an empty response, "
            f"{dropped['identical']} with two identical ones); nothing to annotate"
        )
    data = io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))
    with transaction.atomic():
        result = import_comparisons(
            project, data, filename="sample_round.jsonl", fmt="jsonl", round=job.round
        )
        SamplingJob.objects.filter(pk=job.pk).update(n_existing=result.duplicates)
        Project.objects.filter(pk=project.pk, current_round__lt=job.round).update(current_round=job.round)
    return result.created


def pair_lines(job: SamplingJob, prompts: list[Prompt], pairs: list[tuple[str, str]], model_a: str, model_b: str):
    """The import lines of the pairs worth annotating, and how many were dropped:
    ``{"empty": n, "identical": n}`` (whitespace around a response, and NUL characters, which no
    text column stores, do not count)."""
    lines, dropped = [], {"empty": 0, "identical": 0}
    for prompt, (a, b) in zip(prompts, pairs):
        a, b = a.replace("\x00", "").strip(), b.replace("\x00", "").strip()
        if not a or not b:
            dropped["empty"] += 1
            continue
        if a == b:
            dropped["identical"] += 1
            continue
        lines.append(
            json.dumps(
                {
                    "prompt": prompt.messages if prompt.messages else prompt.text,
                    "response_a": a,
                    "response_b": b,
                    "model_a": model_a,
                    "model_b": model_b,
                    "metadata": {"sampling_job": job.pk, "source": "training.sample_round", "pairing": job.pairing},
                },
                ensure_ascii=False,
            )
        )
    return lines, dropped
