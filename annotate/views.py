"""The annotate app's pages: home, project set-up (settings, pools, members, import), progress,
and the annotator's page (its "back", to change the previous judgment, is in ``revision_views``).

Views parse input, check the project role (``annotate.roles``) and call one service
(``annotate.queue``, ``annotate.imports``, ``annotate.services``); they hold no business
logic. Annotator-facing templates receive plain dicts built here (``_item_context``), never
model instances, so a template cannot reach a gold answer, a model name, a source preference
or anyone's judgments even by accident.
"""
from __future__ import annotations

import time
import uuid
from functools import wraps

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from . import gold, queue, selectors, services
from .exact import prompt_turns, render_exact
from .forms import AddMemberForm, ImportForm, JudgmentForm, MemberChangeForm, PoolForm, ProjectForm
from .models import Assignment, AssignmentStatus, Judgment, Membership, PairOrder, Pool, Project, Role
from .rendering import render_markdown
from .roles import READ_ROLES, project_and_membership, project_for, role_of, visible_projects

SHOWN_IMPORT_ERRORS = 200


def login_required(view):
    """Django's login_required, but an HTMX request gets an HX-Redirect (a full-page
    navigation to the login page) instead of a login page swapped into a fragment."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            if getattr(request, "htmx", False):
                login = f"{reverse('login')}?next={request.htmx.current_url_abs_path or request.path}"
                return HttpResponseClientRedirect(login)
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def _posted(request):
    """The POST data to bind a form to, or None on GET (an empty POST still binds)."""
    return request.POST if request.method == "POST" else None


def _can_create_projects(user) -> bool:
    return user.is_authenticated and (user.is_superuser or user.is_staff)


def _project_page(request, project: Project, role: str, template: str, context: dict, *, status: int = 200):
    context = {"project": project, "role": role, **context}
    return render(request, template, context, status=status)


# --------------------------------------------------------------------------------------------
# Home and project set-up
# --------------------------------------------------------------------------------------------


@login_required
@require_GET
def home(request):
    user = request.user
    roles = dict(Membership.objects.filter(user=user).values_list("project_id", "role"))
    rows = []
    for project in visible_projects(user).order_by("name"):
        role = Role.ADMIN if user.is_superuser else roles.get(project.pk)
        # A superuser who is also an annotator of the project keeps their annotator entry.
        is_annotator = roles.get(project.pk) == Role.ANNOTATOR
        row = {"project": project, "role": role, "role_label": Role(role).label if role else "", "progress": None}
        if is_annotator:
            row["annotator"] = True
            try:
                queue.annotator_membership(user, project)
                row["progress"] = _annotator_progress(user, project, queue.current_assignment(user, project))
            except queue.NotAnAnnotator as exc:
                row["paused"] = str(exc)
        rows.append(row)
    return render(request, "annotate/home.html", {"rows": rows, "can_create": _can_create_projects(user)})


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request):
    if not _can_create_projects(request.user):
        raise PermissionDenied("Only staff can create projects.")
    form = ProjectForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            project = form.save(commit=False)
            order, project.pair_order = project.pair_order, PairOrder.ARRIVAL
            project.created_by = request.user
            project.save()
            Membership.objects.update_or_create(
                project=project, user=request.user, defaults={"role": Role.ADMIN, "excluded": False}
            )
            services.set_pair_order(project, order, user=request.user)
        messages.success(request, f"Project “{project.name}” created. Next: define pools, add members, import data.")
        return redirect("project_pools", pk=project.pk)
    return render(request, "annotate/project_form.html", {"form": form, "creating": True})


@login_required
@require_GET
def project_detail(request, pk: int):
    """The project's landing page for the user's role."""
    project = get_object_or_404(Project, pk=pk)
    role = role_of(request.user, project)
    if role is None:
        raise PermissionDenied("You are not a member of this project.")
    if Membership.objects.filter(project=project, user=request.user, role=Role.ANNOTATOR).exists():
        return redirect("annotate", pk=pk)
    return redirect("project_progress", pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    form = ProjectForm(_posted(request), instance=project)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            services.set_pair_order(project, form.cleaned_data["pair_order"], user=request.user)
            form.save()
            if "overlap" in form.changed_data:
                queue.sync_open(project)
        messages.success(request, "Settings saved.")
        return redirect("project_settings", pk=project.pk)
    return _project_page(
        request, project, Role.ADMIN, "annotate/project_form.html",
        {"form": form, "tab": "settings", "gold_warning": gold.gold_warning(project)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_pools(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    form = PoolForm(_posted(request), project=project)
    if request.method == "POST" and form.is_valid():
        pool = form.save()
        messages.success(request, f"Pool “{pool.name}” added.")
        return redirect("project_pools", pk=project.pk)
    pools, total = selectors.pool_rows(project)
    return _project_page(
        request,
        project,
        Role.ADMIN,
        "annotate/pools.html",
        {"form": form, "pools": pools, "share_total": total, "shares_ok": abs(total - 1.0) < 1e-6, "tab": "pools"},
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_pool_edit(request, pk: int, pool_id: int):
    project = project_for(request.user, pk, Role.ADMIN)
    pool = get_object_or_404(Pool, pk=pool_id, project=project)
    form = PoolForm(_posted(request), instance=pool, project=project)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Pool “{pool.name}” saved.")
        return redirect("project_pools", pk=project.pk)
    pools, total = selectors.pool_rows(project)
    return _project_page(
        request,
        project,
        Role.ADMIN,
        "annotate/pool_form.html",
        {"form": form, "pool": pool, "pools": pools, "share_total": total, "tab": "pools"},
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_members(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    form = AddMemberForm(_posted(request), project=project)
    if request.method == "POST" and form.is_valid():
        user = form.cleaned_data["user"]
        Membership.objects.create(
            project=project, user=user, role=form.cleaned_data["role"], pool=form.cleaned_data.get("pool")
        )
        messages.success(request, f"{user.username} added as {Role(form.cleaned_data['role']).label.lower()}.")
        return redirect("project_members", pk=project.pk)
    members = (
        Membership.objects.filter(project=project)
        .select_related("user", "pool")
        .annotate(n_judgments=Count("user__judgments", filter=Q(user__judgments__project=project)))
        .order_by("role", "user__username")
    )
    rows = [
        (m, MemberChangeForm(instance=m, project=project, prefix=f"m{m.pk}", form_id=f"member-{m.pk}"))
        for m in members
    ]
    return _project_page(
        request,
        project,
        Role.ADMIN,
        "annotate/members.html",
        {"form": form, "rows": rows, "tab": "members", "has_pools": project.pools.exists()},
    )


@login_required
@require_POST
def project_member_edit(request, pk: int, membership_id: int):
    project = project_for(request.user, pk, Role.ADMIN)
    m = get_object_or_404(Membership, pk=membership_id, project=project)
    action = request.POST.get("action", "save")
    if action in ("exclude", "include"):
        m.excluded = action == "exclude"
        m.save(update_fields=["excluded"])
        verb = "excluded (their judgments are kept)" if m.excluded else "included again"
        messages.success(request, f"{m.user.username} {verb}.")
        return redirect("project_members", pk=project.pk)
    form = MemberChangeForm(request.POST, instance=m, project=project, prefix=f"m{m.pk}")
    if not form.is_valid():
        for errors in form.errors.values():
            for e in errors:
                messages.error(request, f"{m.user.username}: {e}")
        return redirect("project_members", pk=project.pk)
    if m.user_id == request.user.pk and form.cleaned_data["role"] != Role.ADMIN and not request.user.is_superuser:
        messages.error(request, "You cannot remove your own admin role; ask another admin.")
        return redirect("project_members", pk=project.pk)
    form.save()
    messages.success(request, f"{m.user.username} saved.")
    return redirect("project_members", pk=project.pk)


@login_required
@require_http_methods(["GET", "POST"])
def project_pool_delete(request, pk: int, pool_id: int):
    """GET: what uses the pool, and a delete button only when nothing does. POST: delete it
    (``services.delete_pool``), or say why not."""
    project = project_for(request.user, pk, Role.ADMIN)
    pool = get_object_or_404(Pool, pk=pool_id, project=project)
    if request.method == "POST":
        try:
            services.delete_pool(pool)
        except services.PoolInUse as exc:
            messages.error(request, str(exc))
            return redirect("project_pools", pk=project.pk)
        except Pool.DoesNotExist:
            raise Http404("No such pool.") from None
        messages.success(request, f"Pool “{pool.name}” deleted.")
        return redirect("project_pools", pk=project.pk)
    usage = services.pool_usage(pool)
    return _project_page(
        request,
        project,
        Role.ADMIN,
        "annotate/pool_delete.html",
        {"pool": pool, "usage": usage, "refusal": services.pool_refusal(pool, usage), "tab": "pools"},
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_member_remove(request, pk: int, membership_id: int):
    """GET: what removing the member does (their judgments stay, the items they hold go back
    to the queue), with the button. POST: remove them (``services.remove_member``)."""
    project = project_for(request.user, pk, Role.ADMIN)
    m = get_object_or_404(Membership.objects.select_related("user", "pool"), pk=membership_id, project=project)
    if request.method == "POST":
        try:
            removal = services.remove_member(m, by=request.user)
        except services.Refused as exc:
            messages.error(request, str(exc))
            return redirect("project_members", pk=project.pk)
        except Membership.DoesNotExist:
            raise Http404("No such member.") from None
        note = f"{removal.judgments} judgment{'' if removal.judgments == 1 else 's'} kept"
        if removal.released:
            note += f"; {removal.released} held item{'' if removal.released == 1 else 's'} returned to the queue"
        messages.success(request, f"{removal.username} removed from the project ({note}).")
        if removal.user_id == request.user.pk and role_of(request.user, project) != Role.ADMIN:
            return redirect("home")  # they removed themselves: the project's pages are closed to them now
        return redirect("project_members", pk=project.pk)
    usage = services.member_usage(m)
    return _project_page(
        request,
        project,
        Role.ADMIN,
        "annotate/member_remove.html",
        {
            "member": m,
            "usage": usage,
            "refusal": services.removal_refusal(m, by=request.user, usage=usage),
            "is_self": m.user_id == request.user.pk,
            "tab": "members",
        },
    )


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _import_cache_key(user, project: Project, token: str) -> str:
    return f"prefloop:import:{user.pk}:{project.pk}:{token}"


def _import_progress_callback(key: str | None):
    """``progress(done, total)`` for the import service, stored where the polled progress
    view can read it (the default cache; with a per-process cache and several server
    processes the bar may stay indeterminate, the import itself is unaffected)."""
    if not key:
        return None

    def progress(done: int, total: int) -> None:
        cache.set(key, {"done": int(done), "total": int(total)}, timeout=600)

    return progress


def _page_hint(hint: str) -> str:
    """An import hint in this page's terms: the checkbox, not the API/CLI option."""
    from .imports.validation import EMPTY_RESPONSE_HINT

    if hint == EMPTY_RESPONSE_HINT:
        return "Empty responses are refused unless allowed: tick “Allow empty responses” above and upload again if the file means them."
    return hint


@login_required
@require_http_methods(["GET", "POST"])
def project_import(request, pk: int):
    from . import imports

    project = project_for(request.user, pk, Role.ADMIN)
    form = ImportForm(_posted(request), request.FILES if request.method == "POST" else None)
    result = errors = None
    truncated = False
    hints: list[str] = []
    filename = ""
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        filename = upload.name
        token = form.cleaned_data.get("token") or ""
        key = _import_cache_key(request.user, project, token) if token else None
        if key:
            cache.set(key, {"done": 0, "total": 0, "checking": True}, timeout=600)
        common = {
            "filename": upload.name,
            "fmt": form.cleaned_data.get("fmt") or None,
            "round": form.cleaned_data.get("round"),
            "allow_empty_responses": form.cleaned_data.get("allow_empty_responses", False),
            "progress": _import_progress_callback(key),
        }
        try:
            if form.cleaned_data.get("kind") == "judgments":
                result = imports.import_judgments(project, upload, **common)
            else:
                result = imports.import_comparisons(
                    project, upload, votes_source=form.cleaned_data.get("votes_source") or "", **common
                )
        except imports.ImportValidationError as exc:
            errors = exc.errors
            truncated = exc.truncated
            hints = [_page_hint(h) for h in exc.hints]
        finally:
            if key:
                cache.delete(key)
    context = {
        "form": form,
        "result": result,
        "errors": errors[:SHOWN_IMPORT_ERRORS] if errors else None,
        "n_errors": len(errors) if errors else 0,
        "hidden_errors": max(len(errors) - SHOWN_IMPORT_ERRORS, 0) if errors else 0,
        "truncated": truncated,
        "hints": hints,
        "filename": filename,
        "tab": "import",
        "kind": form.cleaned_data.get("kind") if form.is_bound and form.is_valid() else "comparisons",
        "n_comparisons": project.comparisons.count(),
        "new_token": uuid.uuid4().hex,
    }
    if request.htmx and request.method == "POST":
        return _project_page(request, project, Role.ADMIN, "annotate/_import_result.html", context)
    return _project_page(request, project, Role.ADMIN, "annotate/import.html", context)


@login_required
@require_GET
def project_import_progress(request, pk: int):
    project = project_for(request.user, pk, Role.ADMIN)
    token = request.GET.get("token", "")[:64]
    state = cache.get(_import_cache_key(request.user, project, token)) if token else None
    return render(request, "annotate/_import_progress.html", {"state": state})


# --------------------------------------------------------------------------------------------
# Progress (admins and researchers)
# --------------------------------------------------------------------------------------------


@login_required
@require_GET
def project_progress(request, pk: int):
    project = project_for(request.user, pk, *READ_ROLES)
    role = role_of(request.user, project)
    report = selectors.progress_report(project)
    return _project_page(request, project, role, "annotate/progress.html", {**report, "tab": "progress"})


# --------------------------------------------------------------------------------------------
# The annotator's page
# --------------------------------------------------------------------------------------------


_CLAIM = object()


def _item_context(
    request,
    project: Project,
    *,
    membership=None,
    finished: bool = False,
    notice: str = "",
    notice_level: str = "info",
    served=_CLAIM,
) -> dict:
    """What the annotator sees next. Only plain values go to the template: the assignment id,
    the rendered prompt and the two rendered responses in display order, and counters.

    ``membership``: the annotator's, when the view has read it already; ``finished``: the
    annotator has just finished their item in this request, so they hold none; ``served``: the
    next item when the request already has it (``queue.submit_and_next``; None: nothing left)."""
    user = request.user
    ctx = {"project": project, "notice": notice, "notice_level": notice_level, "item": None, "blocked": ""}
    try:
        if served is _CLAIM:
            assignment = queue.next_assignment(user, project, membership=membership, held_checked=finished)
        else:
            assignment = served
    except queue.NotAnAnnotator as exc:
        ctx["blocked"] = str(exc)
        return ctx
    ctx["progress"] = _annotator_progress(user, project, assignment)
    if assignment is not None:
        left, right = queue.shown_pair(assignment)
        prompt = assignment.comparison.prompt
        ctx["item"] = {
            "assignment_id": assignment.pk,
            "prompt_turns": prompt_turns(prompt.text, prompt.messages),
            "left_html": render_exact(left.text),
            "right_html": render_exact(right.text),
        }
    return ctx


def _done_today(user, project: Project) -> int:
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    return Judgment.objects.filter(annotator=user, project=project, created_at__gte=midnight).count()


def _annotator_progress(user, project: Project, held: Assignment | None = None) -> dict:
    """The annotator's counter: done, skipped and remaining (the held item included)."""
    prog = queue.progress(user, project)
    total = prog.done + prog.remaining
    return {
        "done": prog.done,
        "skipped": prog.skipped,
        "remaining": prog.remaining,
        "fraction": prog.done / total if total else 1.0,
    }


def _timed(response, started: float):
    """Server-Timing: how long the submit and the next item took here (the browser test and
    the benchmark split submit → next-item time into server and browser parts with it)."""
    response["Server-Timing"] = f"app;desc=\"submit+next\";dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def _render_item(request, project: Project, **kwargs):
    return render(request, "annotate/_item.html", _item_context(request, project, **kwargs))


@login_required
@require_http_methods(["GET", "POST"])
def annotate(request, pk: int):
    """GET: the annotator's page (or just the item partial for HTMX). POST: submit a judgment;
    the response is the next item's partial (HTMX) or a redirect back here."""
    project, membership = project_and_membership(request.user, pk, Role.ANNOTATOR)
    if request.method == "GET":
        if request.htmx:
            return _render_item(request, project, membership=membership)
        ctx = _item_context(request, project, membership=membership)
        # Open the first time only; afterwards they stay one click (or the I key) away.
        done = ctx.get("progress", {}).get("done", 0)
        first_time = membership is not None and membership.instructions_seen_at is None and done == 0
        if first_time and project.instructions:
            Membership.objects.filter(pk=membership.pk).update(instructions_seen_at=timezone.now())
        ctx.update(
            role=Role.ANNOTATOR,
            tab="annotate",
            instructions_html=render_markdown(project.instructions),
            instructions_open=first_time,
        )
        return render(request, "annotate/annotate.html", ctx)

    started = time.perf_counter()
    notice, level, served = _submit(request, project)
    if request.htmx:
        ctx = _item_context(
            request, project, membership=membership, finished=not notice, notice=notice, notice_level=level,
            served=served,
        )
        if not notice:
            ctx["saved"] = {"verb": "Saved", "done_today": _done_today(request.user, project)}
        return _timed(render(request, "annotate/_item.html", ctx), started)
    if notice:
        getattr(messages, level if level in ("info", "success", "warning", "error") else "info")(request, notice)
    else:
        messages.success(request, f"Saved · {_done_today(request.user, project)} done today")
    return redirect("annotate", pk=project.pk)


def _submit(request, project: Project) -> tuple[str, str, object]:
    """Record the posted judgment; return a (message, level) for the annotator, or ("", ""),
    and the next item when the submit served it (``_CLAIM`` when the page should ask)."""
    form = JudgmentForm(request.POST)
    if not form.is_valid():
        if "choice" in form.errors:
            return "Pick which response is better (1, 2, 3 or 0) before submitting.", "warning", _CLAIM
        return "That submission was incomplete; here is your item again.", "warning", _CLAIM
    data = form.cleaned_data
    try:
        # The judgment and the next item in one service call (one transaction on PostgreSQL).
        done = queue.submit_and_next(
            request.user,
            data["assignment"],
            choice=data["choice"],
            strength=data["strength"],
            rationale=data["rationale"],
            seconds=data["seconds"],
            project=project,
        )
    except Assignment.DoesNotExist:
        return "That item is not assigned to you; here is your next one.", "warning", _CLAIM
    except queue.AssignmentGone as exc:
        return f"{exc} Here is your next item.", "warning", _CLAIM
    except queue.QueueError as exc:
        return str(exc), "warning", _CLAIM
    # The next item is of the assignment's project: another project's page asks for its own.
    return "", "", done.next if done.judgment.project_id == project.pk else _CLAIM


@login_required
@require_POST
def annotate_skip(request, pk: int):
    project, membership = project_and_membership(request.user, pk, Role.ANNOTATOR)
    started = time.perf_counter()
    notice, level, skipped = "", "", False
    try:
        assignment_id = int(request.POST.get("assignment", ""))
        skipped = queue.skip(request.user, assignment_id).status == AssignmentStatus.SKIPPED
        notice, level = "Skipped. You will not be shown that item again.", "info"
    except (ValueError, Assignment.DoesNotExist):
        notice, level = "There was nothing to skip; here is your next item.", "warning"
    except queue.QueueError as exc:
        notice, level = str(exc), "warning"
    if request.htmx:
        rendered = _render_item(request, project, membership=membership, finished=skipped, notice=notice, notice_level=level)
        return _timed(rendered, started)
    messages.info(request, notice)
    return redirect("annotate", pk=project.pk)
