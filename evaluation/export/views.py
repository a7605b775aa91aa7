"""Export pages: the project's exports with the create form, one export's page (progress
polled with HTMX, stats, dataset card preview, downloads), and the downloads themselves.

Admins and researchers of the project only (``READ_ROLES``); annotators get 403, anonymous
users the login page. Each view parses input and calls one service of
:mod:`evaluation.export`.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from annotate.models import Role
from annotate.rendering import render_markdown
from annotate.roles import READ_ROLES, project_for, role_of
from annotate.views import login_required

from ..models import Export, JobStatus
from .downloads import available_downloads, download_file, may_download, read_card
from .forms import ExportForm
from .options import ExportError, ExportOptions
from .services import check_export, create_export, retry_export

PAGE_SIZE = 50


def _context(request, project, **extra) -> dict:
    return {
        "project": project,
        "role": role_of(request.user, project) or Role.RESEARCHER,
        "tab": "exports",
        **extra,
    }


def _split_card(card: str) -> tuple[str, str]:
    """(YAML front matter, Markdown body) of a dataset card."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end > 0:
            return card[4:end], card[end + 5 :]
    return "", card


def _status_context(export: Export, may_download: bool = True) -> dict:
    stats = export.stats or {}
    card = read_card(export) if export.status == JobStatus.SUCCEEDED else ""
    front, body = _split_card(card)
    labels = {
        "jsonl": "JSONL (TRL), train split",
        "jsonl-test": "JSONL (TRL), test split",
        "parquet": "Parquet",
        "csv": "CSV",
        "judgments": "Judgments JSONL",
        "hf": "datasets folder (.tar.gz)",
        "card": "Dataset card (README.md)",
        "metadata": "metadata.json",
        "zip": "Everything (.zip)",
        "tar.gz": "Everything (.tar.gz)",
    }
    downloads = [(what, labels[what]) for what in available_downloads(export)] if may_download else []
    agreement = (stats.get("agreement") or {}).get("overall") or {}
    return {
        "export": export,
        "running": export.status in (JobStatus.QUEUED, JobStatus.RUNNING),
        "percent": int(round((export.progress or 0) * 100)),
        "stats": stats,
        "agreement": agreement,
        "downloads": downloads,
        "card_front": front,
        "card_html": render_markdown(body) if body else "",
        "options": ExportOptions.from_params(export.params),
        "may_download": may_download,
    }


@login_required
@require_http_methods(["GET", "POST"])
def export_list(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    form = ExportForm(
        request.POST or None, project=project, is_admin=role_of(request.user, project) == Role.ADMIN
    )
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                export = create_export(project, request.user, form.options, name=form.cleaned_data["name"])
        except ExportError as exc:
            form.add_error(None, str(exc))
        else:
            url = reverse("export_detail", args=[project.pk, export.pk])
            if request.htmx:
                return HttpResponseClientRedirect(url)
            messages.success(request, f"Export {export.pk} queued.")
            return redirect(url)
    qs = Export.objects.filter(project=project).select_related("created_by").order_by("-created_at", "-pk")
    # Django's get_page: a bad, negative or huge ?page= gives the first or the last page (never an
    # OFFSET past the database's integer range).
    pager = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(pager.object_list)
    for export in rows:
        check_export(export)
    ctx = _context(
        request,
        project,
        form=form,
        exports=rows,
        page=pager.number,
        total=pager.paginator.count,
        has_next=pager.has_next(),
        has_prev=pager.has_previous(),
        any_running=any(e.status in (JobStatus.QUEUED, JobStatus.RUNNING) for e in rows),
    )
    status = 400 if request.method == "POST" else 200
    if request.htmx and request.htmx.target == "export-rows":
        return render(request, "evaluation/export_rows.html", ctx)
    return render(request, "evaluation/export_list.html", ctx, status=status)


def _export(request, pk: int, export_id: int):
    project = project_for(request.user, pk, *READ_ROLES)
    export = get_object_or_404(
        Export.objects.select_related("project", "created_by"), pk=export_id, project=project
    )
    check_export(export)  # a build whose worker died is shown re-queued or failed, not "running"
    return project, export


@login_required
@require_GET
def export_detail(request, pk: int, export_id: int):
    project, export = _export(request, pk, export_id)
    may = may_download(export, role_of(request.user, project))
    ctx = _context(request, project, title=f"Export {export.pk}", **_status_context(export, may))
    return render(request, "evaluation/export_detail.html", ctx)


@login_required
@require_GET
def export_status(request, pk: int, export_id: int):
    """The polled part of the export page (HTMX swaps it in place until the build ends)."""
    project, export = _export(request, pk, export_id)
    may = may_download(export, role_of(request.user, project))
    ctx = _context(request, project, **_status_context(export, may))
    return render(request, "evaluation/export_status.html", ctx)


@login_required
@require_POST
def export_retry(request, pk: int, export_id: int):
    """Queue a failed export again (a built export is immutable and is never rebuilt)."""
    project, export = _export(request, pk, export_id)
    if retry_export(export):
        messages.info(request, f"Export {export.pk} queued again.")
    url = reverse("export_detail", args=[project.pk, export.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_GET
def export_download(request, pk: int, export_id: int, what: str):
    project, export = _export(request, pk, export_id)
    if not may_download(export, role_of(request.user, project)):
        raise PermissionDenied("This export includes gold answers: only project admins may download it.")
    try:
        path, filename, content_type = download_file(export, what)
    except ExportError as exc:
        raise Http404(str(exc)) from None
    return FileResponse(open(path, "rb"), as_attachment=True, filename=filename, content_type=content_type)
