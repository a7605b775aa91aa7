"""Project roles: who may do what in a project.

Every view and API endpoint calls one of these. A superuser counts as a project admin.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404

from .models import Membership, Project, Role

# Roles that may read a project's aggregated data and statistics.
READ_ROLES = (Role.ADMIN, Role.RESEARCHER)


def membership(user, project: Project) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, project=project).select_related("pool").first()


def _role_and_membership(user, project: Project) -> tuple[str | None, Membership | None]:
    if user.is_authenticated and user.is_superuser:
        return Role.ADMIN, None  # admin of every project, with or without a membership
    m = membership(user, project)
    return (m.role if m else None), m


def role_of(user, project: Project) -> str | None:
    return _role_and_membership(user, project)[0]


def has_role(user, project: Project, *roles: str) -> bool:
    return role_of(user, project) in roles


def refusal(role: str | None, roles: tuple[str, ...]) -> str:
    """Why a user with ``role`` may not do what needs one of ``roles``, in plain words."""
    needed = " or ".join(Role(r).label.lower() for r in roles) or "another"
    have = f"you are {'an' if role == Role.ADMIN or role == Role.ANNOTATOR else 'a'} {Role(role).label.lower()}" if role else "you are not a member"
    return f"This needs the {needed} role in this project; {have}. Ask a project admin if you need access."


def _require(role: str | None, roles: tuple[str, ...]) -> str:
    if role not in roles:
        raise PermissionDenied(refusal(role, roles))
    return role


def require_role(user, project: Project, *roles: str) -> str:
    """Return the user's role, or raise PermissionDenied if it is not one of ``roles``."""
    return _require(role_of(user, project), roles)


def project_for(user, project_id: int, *roles: str) -> Project:
    """The project, 404 if missing, 403 unless the user has one of ``roles`` in it."""
    return project_and_membership(user, project_id, *roles)[0]


def project_and_membership(user, project_id: int, *roles: str) -> tuple[Project, Membership | None]:
    """``project_for``, and the user's membership read on the way (None for a superuser, whose
    role is admin without one), so that the caller does not read it again."""
    project = get_object_or_404(Project, pk=project_id)
    role, m = _role_and_membership(user, project)
    _require(role, roles)
    return project, m


def roles_by_project(user) -> dict[int, str]:
    """The user's role in each project they have one in, by project id."""
    if user.is_superuser:
        return {pk: Role.ADMIN for pk in Project.objects.values_list("pk", flat=True)}
    return dict(Membership.objects.filter(user=user).values_list("project_id", "role"))


def visible_projects(user):
    """Projects the user has any role in."""
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()
