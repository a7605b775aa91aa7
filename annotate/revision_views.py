"""The annotator's "back": reopen the previous item and change its judgment.

``annotate_back`` renders the annotator's last judgment as an item with their answer
selected (the same partial as the queue's items, ``annotate/_item.html``, in its revise
mode); ``annotate_revise`` records the change through ``annotate.revisions`` (the original is
kept) and returns the item the annotator holds, with a short confirmation.
"""
from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import queue, revisions
from .exact import prompt_turns, render_exact
from .forms import RevisionForm
from .models import Judgment, Project, Role
from .rendering import render_markdown
from .roles import project_and_membership
from .views import _annotator_progress, _done_today, _item_context, _render_item, login_required


def _reopened_context(request, project: Project, reopened: revisions.Reopened) -> dict:
    """The previous item, to change its judgment: the same plain values as _item_context."""
    j = reopened.judgment
    prompt = j.comparison.prompt
    return {
        "project": project,
        "blocked": "",
        "progress": _annotator_progress(request.user, project),
        "revise": {
            "judgment_id": j.pk,
            "choice": reopened.shown_choice,
            "strength": j.strength,
            "rationale": j.rationale,
            "judged_at": j.revised_at or j.created_at,
        },
        "item": {
            "assignment_id": f"revise-{j.pk}",
            "prompt_turns": prompt_turns(prompt.text, prompt.messages),
            "left_html": render_exact(reopened.left.text),
            "right_html": render_exact(reopened.right.text),
        },
    }


@login_required
@require_GET
def annotate_back(request, pk: int):
    """The annotator's previous item, reopened to change its judgment (the B key)."""
    project, membership = project_and_membership(request.user, pk, Role.ANNOTATOR)
    if membership is None or membership.excluded:
        return _render_item(request, project, membership=membership)
    judgment = revisions.last_judgment(request.user, project)
    if judgment is None:
        return _render_item(request, project, membership=membership, notice="Nothing to go back to yet.")
    ctx = _reopened_context(request, project, revisions.reopen(judgment))
    if request.htmx:
        return render(request, "annotate/_item.html", ctx)
    ctx.update(role=Role.ANNOTATOR, tab="annotate", instructions_html=render_markdown(project.instructions))
    return render(request, "annotate/annotate.html", ctx)


@login_required
@require_POST
def annotate_revise(request, pk: int):
    """Change a judgment (the original is kept, see annotate.revisions), then back to the item
    the annotator holds."""
    project, membership = project_and_membership(request.user, pk, Role.ANNOTATOR)
    form = RevisionForm(request.POST)
    notice, level, saved = "", "info", None
    if not form.is_valid():
        notice, level = "Pick which response is better before saving the change.", "warning"
    else:
        data = form.cleaned_data
        try:
            _judgment, changed = revisions.revise(
                request.user,
                data["judgment"],
                choice=data["choice"],
                strength=data["strength"],
                rationale=data["rationale"],
            )
            saved = {"verb": "Changed" if changed else "Unchanged", "done_today": _done_today(request.user, project)}
        except Judgment.DoesNotExist:
            notice, level = "That judgment is not yours to change.", "warning"
        except queue.QueueError as exc:
            notice, level = str(exc), "warning"
    if request.htmx:
        ctx = _item_context(request, project, membership=membership, notice=notice, notice_level=level)
        ctx["saved"] = saved
        return render(request, "annotate/_item.html", ctx)
    if notice:
        messages.warning(request, notice)
    elif saved:
        messages.success(request, f"{saved['verb']} · {saved['done_today']} done today")
    return redirect("annotate", pk=project.pk)
