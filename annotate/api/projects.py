"""Projects, their pools and their members over the REST API, and the token endpoint.

Staff create projects (the creator becomes its admin); every member reads the project and
admins change it (a changed overlap re-opens or closes comparisons through
``annotate.queue.sync_open``). Admins and researchers read pools, admins change them; only
admins see and change memberships. Deleting a pool in use or removing a project's last admin
answers 409 with what to do first (``annotate.services``).
"""
from __future__ import annotations

from django.db import transaction
from django.db.models import Count, Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from prefloop.login_limits import LoginRateThrottle

from .. import queue, services
from ..models import Membership, PairOrder, Pool, Project, Role
from ..permissions import CanCreateProject, IsProjectAdmin, MemberOrAdminWrites, ReaderOrAdminWrites
from ..roles import roles_by_project, visible_projects
from ..serializers import (
    MembershipSerializer,
    PoolSerializer,
    ProjectSerializer,
    TokenRequestSerializer,
    TokenResultSerializer,
)
from .base import (
    DENIED,
    INVALID,
    MISSING,
    ApiView,
    ProjectContext,
    RefusalSerializer,
    bool_param,
    int_param,
    project_schema,
    refused,
)


# --- auth ------------------------------------------------------------------------------------


@extend_schema(
    tags=["auth"],
    summary="Get an API token",
    description="Exchange a username and password for the user's API token "
    "(send it as `Authorization: Token <key>`).",
    request=TokenRequestSerializer,
    responses={
        200: TokenResultSerializer,
        400: OpenApiResponse(description="Wrong username or password."),
        429: OpenApiResponse(
            description="Too many failed sign-ins for this username from this address, or too many "
            "requests from this address: wait (see `Retry-After` when given)."
        ),
    },
    auth=[],
)
class TokenView(ObtainAuthToken):
    # Brute-force limits (prefloop/login_limits.py): requests per client address, and
    # django-axes' count of failed passwords per username and address.
    throttle_classes = [LoginRateThrottle]

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except ValidationError:
            if getattr(request, "axes_locked_out", False):
                return Response(
                    {"detail": "Too many failed sign-ins for this username from this address; try again later."},
                    status=status.HTTP_429_TOO_MANY_REQUESTS,
                )
            raise


# --- projects --------------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        tags=["projects"],
        summary="Your projects",
        description="Projects in which you have a role, with your role. Annotators see a short form.",
        responses={200: ProjectSerializer(many=True), 401: DENIED},
    ),
    post=extend_schema(
        tags=["projects"],
        summary="Create a project",
        description="Staff and superusers only; the creator becomes the project's admin.",
        responses={201: ProjectSerializer, 400: INVALID, 403: DENIED},
    ),
)
class ProjectListCreate(ApiView, generics.ListCreateAPIView):
    serializer_class = ProjectSerializer
    permission_classes = [CanCreateProject]

    def rows(self):
        return visible_projects(self.request.user).order_by("name")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not self.fake and self.request.user.is_authenticated:
            context["roles"] = roles_by_project(self.request.user)
        return context

    def perform_create(self, serializer):
        order = serializer.validated_data.pop("pair_order", PairOrder.ARRIVAL)
        with transaction.atomic():
            project = serializer.save(created_by=self.request.user)
            Membership.objects.create(project=project, user=self.request.user, role=Role.ADMIN)
            services.set_pair_order(project, order, user=self.request.user)
        serializer.context["roles"] = {project.pk: Role.ADMIN}


@extend_schema_view(
    get=project_schema("projects", "A project", {200: ProjectSerializer, 403: DENIED, 404: MISSING}),
    put=project_schema(
        "projects",
        "Replace a project's settings",
        {200: ProjectSerializer, 400: INVALID, 403: DENIED},
        description="Project admins only.",
    ),
    patch=project_schema(
        "projects",
        "Change a project's settings",
        {200: ProjectSerializer, 400: INVALID, 403: DENIED},
        description="Project admins only. Changing the overlap re-opens or closes comparisons accordingly. "
        "Changing `pair_order` resets every comparison's priority and, for an active order (`margin`, "
        "`disagreement`), queues the priority computation (`/api/projects/{id}/priorities/`).",
    ),
)
class ProjectDetail(ApiView, generics.RetrieveUpdateAPIView):
    serializer_class = ProjectSerializer
    permission_classes = [MemberOrAdminWrites]

    def get_object(self):
        return self.project

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not self.fake:
            context["roles"] = {self.project.pk: self.project_role}
        return context

    def perform_update(self, serializer):
        old_overlap = serializer.instance.overlap
        order = serializer.validated_data.pop("pair_order", None)
        with transaction.atomic():
            project = serializer.save()
            if order is not None:
                services.set_pair_order(project, order, user=self.request.user)
            if project.overlap != old_overlap:
                queue.sync_open(project)


# --- pools -----------------------------------------------------------------------------------


def _pools(project: Project):
    return Pool.objects.filter(project=project).annotate(
        n_members=Count("members", filter=Q(members__role=Role.ANNOTATOR))
    )


@extend_schema_view(
    get=project_schema(
        "pools",
        "A project's pools",
        {200: PoolSerializer(many=True), 403: DENIED, 404: MISSING},
        description="Admins and researchers.",
    ),
    post=project_schema(
        "pools",
        "Add a pool",
        {201: PoolSerializer, 400: INVALID, 403: DENIED},
        description="Admins only. Target shares of a project's pools add up to at most 1.",
    ),
)
class PoolListCreate(ProjectContext, ApiView, generics.ListCreateAPIView):
    serializer_class = PoolSerializer
    permission_classes = [ReaderOrAdminWrites]

    def rows(self):
        return _pools(self.project).order_by("name")

    def perform_create(self, serializer):
        serializer.save(project=self.project)


@extend_schema_view(
    get=project_schema("pools", "A pool", {200: PoolSerializer, 403: DENIED, 404: MISSING}),
    put=project_schema("pools", "Replace a pool", {200: PoolSerializer, 400: INVALID, 403: DENIED}),
    patch=project_schema("pools", "Change a pool", {200: PoolSerializer, 400: INVALID, 403: DENIED}),
    delete=project_schema(
        "pools",
        "Delete a pool",
        {
            204: OpenApiResponse(description="Deleted."),
            403: DENIED,
            404: MISSING,
            409: OpenApiResponse(RefusalSerializer, description="The pool is in use; nothing was deleted."),
        },
        description=(
            "Admins only, and only a pool nothing uses: no member in it (move them to another pool "
            "first), no judgment made in it (judgments record their pool, so such a pool is kept; set "
            "its target share to 0 instead) and no item of it still being judged. Otherwise 409 with "
            "a message naming what uses it."
        ),
    ),
)
class PoolDetail(ProjectContext, ApiView, generics.RetrieveUpdateDestroyAPIView):
    serializer_class = PoolSerializer
    permission_classes = [ReaderOrAdminWrites]

    def rows(self):
        return _pools(self.project)

    def destroy(self, request, *args, **kwargs):
        try:
            services.delete_pool(self.get_object())
        except services.Refused as exc:
            return refused(exc)
        except Pool.DoesNotExist:
            raise NotFound() from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- memberships -----------------------------------------------------------------------------

MEMBERSHIP_FILTERS = [
    OpenApiParameter("role", OpenApiTypes.STR, enum=Role.values, description="Only this role."),
    OpenApiParameter("pool", OpenApiTypes.INT, description="Only members of this pool."),
    OpenApiParameter("excluded", OpenApiTypes.BOOL, description="Only excluded (true) or active (false) members."),
]


@extend_schema_view(
    get=project_schema(
        "memberships",
        "A project's members",
        {200: MembershipSerializer(many=True), 403: DENIED, 404: MISSING},
        description="Admins only.",
        parameters=[*MEMBERSHIP_FILTERS],
    ),
    post=project_schema(
        "memberships",
        "Add a user to the project",
        {201: MembershipSerializer, 400: INVALID, 403: DENIED},
        description="Admins only. Name the user by username, with a role and (for annotators) a pool.",
    ),
)
class MembershipListCreate(ProjectContext, ApiView, generics.ListCreateAPIView):
    serializer_class = MembershipSerializer
    permission_classes = [IsProjectAdmin]

    def rows(self):
        qs = Membership.objects.filter(project=self.project).select_related("user", "pool").order_by("pk")
        role = self.request.query_params.get("role")
        if role:
            qs = qs.filter(role=role)
        pool = int_param(self.request, "pool")
        if pool is not None:
            qs = qs.filter(pool_id=pool)
        excluded = bool_param(self.request, "excluded")
        if excluded is not None:
            qs = qs.filter(excluded=excluded)
        return qs


@extend_schema_view(
    get=project_schema("memberships", "A membership", {200: MembershipSerializer, 403: DENIED, 404: MISSING}),
    put=project_schema(
        "memberships",
        "Replace a membership",
        {200: MembershipSerializer, 400: INVALID, 403: DENIED},
    ),
    patch=project_schema(
        "memberships",
        "Change a membership",
        {200: MembershipSerializer, 400: INVALID, 403: DENIED},
        description="Change the role or pool, exclude (`excluded: true`) or include an annotator again, "
        "or set a weight override.",
    ),
    delete=project_schema(
        "memberships",
        "Remove a member from the project",
        {
            204: OpenApiResponse(description="Removed."),
            403: DENIED,
            404: MISSING,
            409: OpenApiResponse(RefusalSerializer, description="The project's last admin; nothing was changed."),
        },
        description=(
            "Admins only. The member's judgments are kept; the items they hold go back to the queue; "
            "they no longer see the project (403 on its endpoints). A project keeps at least one "
            "admin: removing its last admin, yourself included, answers 409."
        ),
    ),
)
class MembershipDetail(ProjectContext, ApiView, generics.RetrieveUpdateDestroyAPIView):
    serializer_class = MembershipSerializer
    permission_classes = [IsProjectAdmin]

    def rows(self):
        return Membership.objects.filter(project=self.project).select_related("user", "pool")

    def destroy(self, request, *args, **kwargs):
        try:
            services.remove_member(self.get_object(), by=request.user)
        except services.Refused as exc:
            return refused(exc)
        except Membership.DoesNotExist:
            raise NotFound() from None
        return Response(status=status.HTTP_204_NO_CONTENT)
