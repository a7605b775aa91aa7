"""The training pages: runs list, launch form, the live run page, the model registry.

Views parse input, check the project role and call one function of ``training.services``.
The run page polls ``run_live`` every 2 s with HTMX while the run is queued or running; the
fragment it returns carries the polling attributes only while the run is active, so polling
stops by itself when the run ends. Plots are server-side SVG (``training.plots``), no JS.
"""

from __future__ import annotations

from html import escape

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.models import Membership, Project, Role
from annotate.roles import READ_ROLES, project_for, role_of
from annotate.views import login_required

from .forms import LaunchRunForm, RegisterModelForm, SampleForm, SampleRoundForm
from .models import GenerationSample, ModelVersion, SamplingJob, TrainingMetric, TrainingRun
from . import resume
from .plots import calibration_plot, recent_samples, run_plots
from .services.errors import TrainingError
from .services.hyperparameters import effective_config, train_config_defaults
from .services.registry import model_roots, register_model_for, visible_models
from .services.runs import cancel_run, launch_run
from .services.sampling import AGAINST, queue_sample_round, request_sample

LOG_TAIL_LINES = 40


# =============================================================================================
# Helpers
# =============================================================================================


def _training_page(request, project: Project, role: str, template: str, context: dict, status: int = 200):
    return render(
        request, template, {"project": project, "role": role, "tab": "training", **context}, status=status
    )


def _get_run(project: Project, run_id: int) -> TrainingRun:
    return get_object_or_404(
        TrainingRun.objects.select_related("base_model", "export", "output_model", "created_by"),
        pk=run_id,
        project=project,
    )


def _eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {(seconds % 3600) // 60:02d}m"


def run_live_context(run: TrainingRun) -> dict:
    rows = list(TrainingMetric.objects.filter(run=run).order_by("step").values_list("step", "data"))
    last = dict(rows[-1][1]) if rows else {}
    for _, data in rows:  # the latest held-out numbers, whichever step carried them
        last.update({k: v for k, v in data.items() if k.startswith("eval_")})
    calibration = None
    for _, data in reversed(rows):
        if data.get("eval_calibration"):
            calibration = calibration_plot(data["eval_calibration"])
            break
    return {
        "run": run,
        "plots": run_plots(rows, run.recipe),
        "calibration_plot": calibration,
        "ppo_samples": recent_samples(rows),
        "last": last,
        "n_metrics": len(rows),
        "eta": _eta(run.eta_seconds),
        "percent": round(100 * (run.progress or 0.0), 1),
        "log_tail": "\n".join((run.logs or "").splitlines()[-LOG_TAIL_LINES:]),
        "polling": run.is_active,
        "resumable": not resume.resume_refusal(run),
        "checkpoint": resume.last_checkpoint(run) if run.status in resume.RESUMABLE else None,
    }


#: How the run page names a recipe's phases.
PHASE_NAMES = {"sft": "SFT", "dpo": "DPO", "rm": "Reward model", "ppo": "PPO", "unknown": "Phase not recorded"}


def eval_phases(summary: dict | None) -> list[dict]:
    """``summary["eval"]`` (``{phase: {eval_*: value}}``) as rows for the page: each held-out number
    under the phase that measured it (SFT's perplexity is not DPO's loss). Runs finished before the
    phases were recorded keep a flat dict, shown as "phase not recorded"."""
    evals = (summary or {}).get("eval") or {}
    nested = {k: v for k, v in evals.items() if isinstance(v, dict)}
    loose = {k: v for k, v in evals.items() if not isinstance(v, dict)}
    if loose:
        nested.setdefault("unknown", {}).update(loose)
    return [
        {"phase": ph, "label": PHASE_NAMES.get(ph, ph),
         "metrics": [(k.removeprefix("eval_").replace("_", " "), v) for k, v in m.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]}
        for ph, m in nested.items()
    ]


def _can_register_models(user) -> bool:
    return (
        user.is_superuser or user.is_staff or Membership.objects.filter(user=user, role=Role.ADMIN).exists()
    )


# =============================================================================================
# Runs
# =============================================================================================


@login_required
@require_GET
def runs_list(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    role = role_of(request.user, project)
    runs = TrainingRun.objects.filter(project=project).select_related("base_model", "output_model", "export")
    versions = ModelVersion.objects.filter(Q(project=project) | Q(project__isnull=True)).select_related(
        "parent"
    )
    return _training_page(request, project, role, "training/runs.html", {"runs": runs, "versions": versions})


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    form = LaunchRunForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            run = launch_run(
                project,
                base_model=form.cleaned_data["base_model"],
                recipe=form.cleaned_data["recipe"],
                export=form.cleaned_data.get("export"),
                hyperparameters=form.hyperparameters(),
                created_by=request.user,
            )
        except TrainingError as exc:
            field = exc.field if exc.field in form.fields else None
            form.add_error(field if field != "hyperparameters" else None, exc.message)
        else:
            messages.success(request, f"Run {run.pk} queued on the gpu worker.")
            return redirect("training_run", pk=project.pk, run_id=run.pk)
    status = 400 if request.method == "POST" else 200
    return _training_page(
        request,
        project,
        Role.ADMIN,
        "training/run_new.html",
        {"form": form, "defaults": train_config_defaults()},
        status=status,
    )


@login_required
@require_GET
def run_detail(request, pk: int, run_id: int):
    project = project_for(request.user, pk, *READ_ROLES)
    role = role_of(request.user, project)
    run = _get_run(project, run_id)
    context = run_live_context(run)
    context.update(_done_context(run))
    context["config"] = effective_config(run)
    context["run_title"] = f"Run #{run.pk}"
    context["data_stats"] = (run.summary or {}).get("data")
    context["eval_phases"] = eval_phases(run.summary)
    return _training_page(request, project, role, "training/run_detail.html", context)


def _done_context(run: TrainingRun) -> dict:
    return {
        "sample_form": SampleForm(),
        "round_form": SampleRoundForm(project=run.project),
        "samples": GenerationSample.objects.filter(run=run)[:5],
        "sampling_jobs": SamplingJob.objects.filter(run=run)[:5],
    }


@login_required
@require_GET
def run_live(request, pk: int, run_id: int):
    """The polled fragment: progress, metrics, plots, logs."""
    project = project_for(request.user, pk, *READ_ROLES)
    run = _get_run(project, run_id)
    role = role_of(request.user, project)
    context = {"project": project, "role": role, **run_live_context(run)}
    response = render(request, "training/_run_live.html", context)
    if not run.is_active and request.headers.get("HX-Request") and request.GET.get("was") == "active":
        response["HX-Refresh"] = "true"  # the run just ended: reload once to show its results
    return response


@login_required
@require_http_methods(["GET", "POST"])
def run_cancel(request, pk: int, run_id: int):
    """GET: ask for confirmation (what stops, what is kept). POST: cancel the run."""
    project = project_for(request.user, pk, Role.ADMIN)
    run = _get_run(project, run_id)
    if request.method == "GET":
        if not run.is_active or run.cancel_requested:
            return redirect("training_run", pk=project.pk, run_id=run.pk)
        return render(
            request,
            "training/run_cancel.html",
            {"project": project, "role": Role.ADMIN, "run": run, "run_title": f"Run #{run.pk}", "tab": "training"},
        )
    try:
        cancel_run(run, request.user)
    except TrainingError as exc:
        messages.error(request, exc.message)
    else:
        messages.info(
            request, "Cancel requested: the run stops before its next step and keeps its checkpoint."
        )
    if getattr(request, "htmx", False):
        run.refresh_from_db()
        return render(
            request,
            "training/_run_live.html",
            {"project": project, "role": Role.ADMIN, **run_live_context(run)},
        )
    return redirect("training_run", pk=project.pk, run_id=run.pk)


@login_required
@require_POST
def run_resume(request, pk: int, run_id: int):
    """Queue a cancelled or failed run again, from its last checkpoint (training.resume)."""
    project = project_for(request.user, pk, Role.ADMIN)
    run = _get_run(project, run_id)
    try:
        resume.resume_run(run, request.user)
    except TrainingError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Resumed: the run is queued and continues from its last checkpoint.")
    return redirect("training_run", pk=project.pk, run_id=run.pk)


@login_required
@require_POST
def run_sample(request, pk: int, run_id: int):
    """Queue a generation from the run's output model; returns the polled sample fragment."""
    project = project_for(request.user, pk, Role.ADMIN, Role.RESEARCHER)
    run = _get_run(project, run_id)
    if run.output_model is None:
        raise PermissionDenied("This run has no output model yet.")
    form = SampleForm(request.POST)
    if not form.is_valid():
        return render(request, "training/_sample_form_errors.html", {"form": form}, status=400)
    try:
        sample = request_sample(
            run.output_model,
            form.cleaned_data["prompt"],
            run=run,
            user=request.user,
            max_new_tokens=form.cleaned_data["max_new_tokens"],
        )
    except TrainingError as exc:
        return HttpResponse(f'<p class="error">{escape(exc.message)}</p>', status=400)
    if getattr(request, "htmx", False):
        return render(request, "training/_sample.html", {"project": project, "sample": sample})
    return redirect("training_run", pk=project.pk, run_id=run.pk)


@login_required
@require_GET
def sample_detail(request, pk: int, sample_id: int):
    project = project_for(request.user, pk, *READ_ROLES)
    sample = get_object_or_404(GenerationSample, pk=sample_id, run__project=project)
    return render(request, "training/_sample.html", {"project": project, "sample": sample})


@login_required
@require_POST
def run_sample_round(request, pk: int, run_id: int):
    project = project_for(request.user, pk, Role.ADMIN)
    run = _get_run(project, run_id)
    if run.output_model is None:
        messages.error(request, "This run has no output model to sample from.")
        return redirect("training_run", pk=project.pk, run_id=run.pk)
    form = SampleRoundForm(request.POST, project=project)
    if form.is_valid():
        data = form.cleaned_data
        try:
            job = queue_sample_round(
                project,
                run.output_model,
                n_prompts=data["n_prompts"],
                pairing=AGAINST[data["against"]],
                compare_to=data.get("compare_model"),
                run=run,
                user=request.user,
                max_new_tokens=data["max_new_tokens"],
                temperature=data["temperature"],
            )
        except TrainingError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, f"Sampling {job.n_prompts} prompts into round {job.round} for the annotators."
            )
    else:
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect("training_run", pk=project.pk, run_id=run.pk)


@login_required
@require_GET
def sampling_job_detail(request, pk: int, job_id: int):
    project = project_for(request.user, pk, *READ_ROLES)
    job = get_object_or_404(SamplingJob, pk=job_id, project=project)
    return render(request, "training/_sampling_job.html", {"project": project, "job": job})


# =============================================================================================
# Model registry
# =============================================================================================


@login_required
@require_http_methods(["GET", "POST"])
def model_registry(request):
    user = request.user
    can_register = _can_register_models(user)
    if not (can_register or Membership.objects.filter(user=user, role=Role.RESEARCHER).exists()):
        raise PermissionDenied("Only admins and researchers see the model registry.")
    roots = None if user.is_superuser else model_roots()
    visible = visible_models(user)
    form = RegisterModelForm(request.POST or None, roots=roots, parents=visible)
    status = 200
    if request.method == "POST":
        if not can_register:
            raise PermissionDenied("Only admins may register models.")
        if form.is_valid():
            try:
                version = register_model_for(
                    user,
                    form.cleaned_data["name"],
                    form.cleaned_data["path"],
                    parent=form.cleaned_data.get("parent"),
                    description=form.cleaned_data.get("description", ""),
                )
            except TrainingError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                messages.success(request, f"Registered {version.name}.")
                return redirect("model_registry")
        status = 400
    versions = visible.select_related("parent", "project", "training_run").order_by("pk")
    return render(
        request,
        "training/models.html",
        {"versions": versions, "form": form, "can_register": can_register},
        status=status,
    )
