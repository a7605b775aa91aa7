"""The settings page's "Active pair selection" panel: the latest priority job with its progress
(polled while it runs) and the "Recompute priorities" button. Admins only; thin: the service
decides."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from annotate.models import PairOrder, Role
from annotate.roles import project_for
from annotate.views import login_required

from .services import latest_job, request_priorities


@login_required
@require_http_methods(["GET", "POST"])
def priorities_panel(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    if request.method == "POST":
        request_priorities(project, reason="on demand", user=request.user)
        if not request.htmx:
            return redirect("project_settings", pk=project.pk)
    job = latest_job(project)
    return render(request, "training/_priorities.html", {
        "project": project, "job": job, "active": project.pair_order != PairOrder.ARRIVAL,
    })
