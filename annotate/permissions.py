"""DRF permission classes for the REST API, built on ``annotate.roles``.

A project-scoped view names its project in the URL as ``project_pk``. The permission looks
the project up once (404 when it does not exist), checks the user's role with
``annotate.roles.role_of`` (403 when it is not allowed) and leaves ``view.project`` and
``view.project_role`` for the view to use, so the role is checked in exactly one place.

* ``IsProjectMember``: any role (admin, researcher, annotator).
* ``IsProjectAnnotator``: annotators only (the queue endpoints).
* ``IsProjectReader``: admins and researchers (aggregated data, comparisons, progress totals).
* ``IsProjectAdmin``: admins only (a superuser counts as an admin everywhere).
* ``ReaderOrAdminWrites``: admins and researchers read; only admins write.
* ``MemberOrAdminWrites``: every member reads; only admins write.
* ``IsAssignmentOwner``: the URL's ``assignment_pk`` is one of the user's own assignments
  (404 otherwise, so other annotators' assignments do not exist for them) and the user is
  an annotator of its project (403 otherwise). Leaves ``view.assignment`` (with its project)
  and ``view.membership`` (the user's, read in the same query; with token authentication, in
  the token's query).
* ``CanCreateProject``: staff or superuser, for ``POST /api/projects/``.
"""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework.exceptions import NotFound
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .models import Project, Role
from .queue import owned_assignment
from .roles import READ_ROLES, role_of

ALL_ROLES = (Role.ADMIN, Role.RESEARCHER, Role.ANNOTATOR)
ADMIN_ONLY = (Role.ADMIN,)

PROJECT_URL_KWARG = "project_pk"


def resolve_project(request, view) -> tuple[Project, str | None]:
    """The URL's project (404 if missing) and the user's role in it, cached on the view."""
    cached = getattr(view, "_project_and_role", None)
    if cached is not None:
        return cached
    project = get_object_or_404(Project, pk=view.kwargs[PROJECT_URL_KWARG])
    role = role_of(request.user, project)
    view._project_and_role = (project, role)
    view.project = project
    view.project_role = role
    return project, role


class ProjectRolePermission(BasePermission):
    """Allow the request when the user's role in the URL's project is in ``read_roles`` (safe
    methods) or ``write_roles`` (everything else)."""

    read_roles: tuple[str, ...] = ALL_ROLES
    write_roles: tuple[str, ...] = ADMIN_ONLY
    message = "You do not have the required role in this project."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if PROJECT_URL_KWARG not in view.kwargs:
            return False
        _, role = resolve_project(request, view)
        allowed = self.read_roles if request.method in SAFE_METHODS else self.write_roles
        return role in allowed


class IsProjectMember(ProjectRolePermission):
    read_roles = ALL_ROLES
    write_roles = ALL_ROLES


class IsProjectAnnotator(ProjectRolePermission):
    read_roles = (Role.ANNOTATOR,)
    write_roles = (Role.ANNOTATOR,)
    message = "Only annotators of this project may do this."


class IsProjectReader(ProjectRolePermission):
    read_roles = READ_ROLES
    write_roles = READ_ROLES
    message = "Only admins and researchers of this project may see this."


class IsProjectAdmin(ProjectRolePermission):
    read_roles = ADMIN_ONLY
    write_roles = ADMIN_ONLY
    message = "Only admins of this project may do this."


class ReaderOrAdminWrites(ProjectRolePermission):
    read_roles = READ_ROLES
    write_roles = ADMIN_ONLY
    message = "Admins and researchers of this project may read this; only admins may change it."


class MemberOrAdminWrites(ProjectRolePermission):
    read_roles = ALL_ROLES
    write_roles = ADMIN_ONLY
    message = "Only admins of this project may change it."


class CanCreateProject(BasePermission):
    """Listing projects is open to every signed-in user (they see only their own); creating one
    needs staff or superuser status."""

    message = "Only staff users may create projects."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return True
        return bool(request.user.is_staff or request.user.is_superuser)


class IsAssignmentOwner(BasePermission):
    message = "Only annotators of this project may do this."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        # One query: the assignment, its project and the user's membership in it (a submit
        # makes one request per judgment; every read here is one it pays for). None at all when
        # the token lookup read them with the user (prefloop.authentication).
        pk = view.kwargs["assignment_pk"]
        read = getattr(request.user, "owned_assignment", None)
        owned = read[1] if read is not None and read[0] == pk else owned_assignment(request.user, pk)
        assignment, membership = owned if owned is not None else (None, None)
        if assignment is None:
            raise NotFound("No such assignment.")
        view.assignment, view.membership = assignment, membership
        # As annotate.roles.role_of: a superuser is an admin everywhere.
        view.project_role = Role.ADMIN if request.user.is_superuser else (membership.role if membership else None)
        return view.project_role == Role.ANNOTATOR
