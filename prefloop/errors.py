"""The 403 and 404 pages: the app's layout, and why the request was refused.

A 403 names the role the page needs and the one the user has (``annotate.roles.refusal``);
a 404 says what was not found and, under ``/projects/<id>/``, that it does not exist in
that project, with a link back to a project the user can see.
"""
from __future__ import annotations

import re

from django.shortcuts import render

_NO_MATCH = re.compile(r"^No (\w+) matches the given query\.?$")
_PROJECT_PATH = re.compile(r"^/projects/(\d+)/")
_NAMES = {
    "Project": "project", "Pool": "pool", "Membership": "member", "Comparison": "comparison",
    "Export": "export", "QualityReport": "quality report", "TrainingRun": "training run",
    "GenerationSample": "sample", "SamplingJob": "sampling job", "ModelVersion": "model",
}


def _message(exception) -> str:
    args = getattr(exception, "args", ()) or ()
    return str(args[0]) if args and isinstance(args[0], str) else ""


def _project(request):
    from annotate.models import Project
    from annotate.roles import role_of

    m = _PROJECT_PATH.match(request.path)
    if not m:
        return None, False
    project = Project.objects.filter(pk=int(m.group(1))).first()
    visible = project is not None and request.user.is_authenticated and role_of(request.user, project) is not None
    return project, visible


def not_found(request, exception=None):
    message = _message(exception)
    project, visible = _project(request)
    if m := _NO_MATCH.match(message):
        thing = _NAMES.get(m.group(1), m.group(1).lower())
        if thing == "project" or project is None:
            message = f"There is no {thing} at this address."
        else:
            message = f"There is no {thing} with that number in this project."
    elif not message or message.startswith("The current path"):
        message = "There is no page at this address."
    context = {"message": message, "project": project if visible else None, "request_path": request.path}
    return render(request, "404.html", context, status=404)


def permission_denied(request, exception=None):
    project, visible = _project(request)
    message = _message(exception) or "You may not open this page."
    return render(request, "403.html", {"message": message, "project": project if visible else None}, status=403)
