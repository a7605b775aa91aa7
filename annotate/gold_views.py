"""The project's Gold page (admins): find comparisons, select them, and make them gold with an
answer -- or regular again. The page parses and renders; ``annotate.gold`` does the writing, the
same service as the API and the import use. Gold answers appear only here and to admins."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from . import gold
from .models import Comparison, Role
from .roles import project_for
from .views import _project_page, login_required

PAGE_SIZE = 50
SHOWN = ("all", "gold", "regular")


def _filters(request) -> dict:
    data = request.POST if request.method == "POST" else request.GET
    shown = data.get("shown", "all")
    round_ = data.get("round", "").strip()
    return {
        "shown": shown if shown in SHOWN else "all",
        "round": round_ if round_.isdigit() else "",
        "q": data.get("q", "").strip()[:200],
        "page": data.get("page", "1"),
    }


def _rows(project, filters: dict):
    qs = Comparison.objects.filter(project=project).select_related("prompt", "response_a", "response_b", "gold")
    if filters["shown"] != "all":
        qs = qs.filter(is_gold=filters["shown"] == "gold")
    if filters["round"]:
        qs = qs.filter(round=int(filters["round"]))
    if filters["q"]:
        qs = qs.filter(prompt__text__icontains=filters["q"])
    return qs.order_by("pk")


@login_required
@require_http_methods(["GET", "POST"])
def project_gold(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    filters = _filters(request)
    if request.method == "POST":
        ids = request.POST.getlist("comparisons")
        answer = request.POST.get("answer", "")
        try:
            if answer == "none":
                n = gold.unset_gold(project, ids)
                messages.success(request, f"{n} comparison{'s' if n != 1 else ''} made regular again.")
            else:
                n = gold.set_gold(project, ids, answer)
                messages.success(request, f"{n} comparison{'s' if n != 1 else ''} made gold with answer “{answer}”.")
        except gold.GoldError as exc:
            messages.error(request, f"Nothing changed: {exc}.")
        query = urlencode({k: v for k, v in filters.items() if v and not (k == "shown" and v == "all")})
        return redirect(f"{request.path}?{query}" if query else request.path)
    page = Paginator(_rows(project, filters), PAGE_SIZE).get_page(filters["page"])
    n_gold = Comparison.objects.filter(project=project, is_gold=True).count()
    keep = urlencode({k: v for k, v in filters.items() if v and k != "page" and not (k == "shown" and v == "all")})
    return _project_page(
        request, project, Role.ADMIN, "annotate/gold.html",
        {"tab": "gold", "page": page, "filters": filters, "n_gold": n_gold, "keep": keep,
         "warning": gold.gold_warning(project)},
    )
