"""The training pages: runs list, launch form, the live run page, the model registry.

Views parse input, check the project role and call one function of ``training.services``.
The run page polls ``run_live`` every 2 s with HTMX while the run is queued or running; the
fragment it returns carries the polling attributes only while the run is active, so polling
stops by itself when the run ends. Plots are server-side SVG (``svg_line_plot``), no JS.
"""

from __future__ import annotations

import math
from html import escape

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.models import Membership, Project, Role
from annotate.roles import READ_ROLES, project_for, role_of
from annotate.views import login_required

from .forms import LaunchRunForm, RegisterModelForm, SampleForm, SampleRoundForm
from .models import GenerationSample, ModelVersion, SamplingJob, TrainingMetric, TrainingRun
from .services.errors import TrainingError
from .services.hyperparameters import effective_config, train_config_defaults
from .services.registry import model_roots, register_model_for
from .services.runs import cancel_run, launch_run
from .services.sampling import queue_sample_round, request_sample

LOG_TAIL_LINES = 40
MAX_PLOT_POINTS = 300

# =============================================================================================
# Server-side SVG line plots
# =============================================================================================

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _downsample(points: list[tuple[int, float]], n: int = MAX_PLOT_POINTS) -> list[tuple[int, float]]:
    if len(points) <= n:
        return points
    stride = len(points) / n
    picked = [points[int(i * stride)] for i in range(n)]
    if picked[-1] != points[-1]:
        picked.append(points[-1])
    return picked


def svg_line_plot(
    title: str,
    series: list[tuple[str, list[tuple[int, float]]]],
    *,
    width: int = 360,
    height: int = 180,
    y_range: tuple[float, float] | None = None,
) -> str:
    """An SVG line plot of ``series`` = ``[(name, [(step, value), ...]), ...]`` over the step axis.

    Every text is escaped; the SVG scales with its container (``viewBox``). A series with one
    point is drawn as a dot."""
    series = [(name, _downsample([(s, v) for s, v in pts if math.isfinite(v)])) for name, pts in series]
    series = [(name, pts) for name, pts in series if pts]
    t = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{t}"><title>{t}</title>'
        f'<text x="8" y="16" class="plot-title">{t}</text>'
    )
    if not series:
        return mark_safe(
            head + f'<text x="{width / 2}" y="{height / 2 + 8}" text-anchor="middle" '
            f'class="plot-empty">no data yet</text></svg>'
        )
    xs = [s for _, pts in series for s, _ in pts]
    ys = [v for _, pts in series for _, v in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys), max(ys)) if y_range is None else y_range
    if y_range is not None:
        y0, y1 = min(y0, min(ys)), max(y1, max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 - y0 < 1e-12:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 46, 10, max(26, 8 + 12 * len(series)), 22
    pw, ph = width - left - right, height - top - bottom

    def px(s):
        return left + pw * (s - x0) / (x1 - x0)

    def py(v):
        return top + ph * (1 - (v - y0) / (y1 - y0))

    out = [head]
    for frac in (0.0, 0.5, 1.0):
        v = y0 + (y1 - y0) * frac
        y = py(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="plot-gridline"/>')
        tick = escape(_fmt(v))
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="plot-tick">{tick}</text>')
    out.append(f'<text x="{left}" y="{height - 6}" class="plot-tick">step {x0}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 6}" text-anchor="end" class="plot-tick">{x1}</text>')
    legend_x = width - right
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            s, v = pts[0]
            out.append(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="2.5" fill="{color}"/>')
        else:
            d = " ".join(f"{'M' if j == 0 else 'L'}{px(s):.1f},{py(v):.1f}" for j, (s, v) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(series) > 1 or name:
            label = f"{name} {_fmt(pts[-1][1])}"
            out.append(
                f'<text x="{legend_x}" y="{14 + i * 12}" text-anchor="end" class="plot-legend" '
                f'fill="{color}">{escape(label)}</text>'
            )
    out.append("</svg>")
    return mark_safe("".join(out))


#: The run page's plots: (title, [(series name, metric key, phase or None)], y range or None).
PLOTS = (
    (
        "Loss",
        [
            ("SFT", "loss", "sft"),
            ("DPO", "loss", "dpo"),
            ("eval SFT", "eval_loss", "sft"),
            ("eval DPO", "eval_loss", "dpo"),
        ],
        None,
    ),
    (
        "DPO reward accuracy",
        [("train", "reward_accuracy", None), ("held-out", "eval_reward_accuracy", None)],
        (0.0, 1.0),
    ),
    ("DPO reward margin", [("train", "reward_margin", None), ("held-out", "eval_reward_margin", None)], None),
    ("Log-probs", [("chosen", "chosen_logps", None), ("rejected", "rejected_logps", None)], None),
    ("KL to reference", [("", "kl_to_ref", None)], None),
    ("Learning rate", [("", "lr", None)], None),
    ("Tokens / s", [("", "tokens_per_s", None)], None),
)


def run_plots(rows: list[tuple[int, dict]]) -> list[str]:
    """The run page's SVG plots from its ``(step, data)`` metric rows."""
    plots = []
    for title, spec, y_range in PLOTS:
        series = []
        for name, key, phase in spec:
            pts = [
                (step, float(d[key]))
                for step, d in rows
                if isinstance(d.get(key), (int, float))
                and not isinstance(d.get(key), bool)
                and (phase is None or d.get("phase") == phase)
            ]
            if pts:
                series.append((name, pts))
        plots.append(svg_line_plot(title, series, y_range=y_range))
    return plots


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
    return {
        "run": run,
        "plots": run_plots(rows),
        "last": last,
        "n_metrics": len(rows),
        "eta": _eta(run.eta_seconds),
        "percent": round(100 * (run.progress or 0.0), 1),
        "log_tail": "\n".join((run.logs or "").splitlines()[-LOG_TAIL_LINES:]),
        "polling": run.is_active,
    }


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
    return _training_page(request, project, role, "training/run_detail.html", context)


def _done_context(run: TrainingRun) -> dict:
    return {
        "sample_form": SampleForm(),
        "round_form": SampleRoundForm(),
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
@require_POST
def run_cancel(request, pk: int, run_id: int):
    project = project_for(request.user, pk, Role.ADMIN)
    run = _get_run(project, run_id)
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
    form = SampleRoundForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            job = queue_sample_round(
                project,
                run.output_model,
                n_prompts=data["n_prompts"],
                compare_to="parent" if data["against"] == "parent" else None,
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
    form = RegisterModelForm(request.POST or None, roots=roots)
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
    versions = ModelVersion.objects.select_related("parent", "project", "training_run")
    return render(
        request,
        "training/models.html",
        {"versions": versions, "form": form, "can_register": can_register},
        status=status,
    )
