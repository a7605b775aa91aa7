"""The annotate REST API: projects, pools, memberships, comparisons (import), the annotator's
queue and progress.

Thin by design: every endpoint checks the project role (``annotate.permissions``), parses its
input with a serializer, calls one service (``annotate.queue``, ``annotate.imports``) and
serializes the result. The annotator endpoints speak only in shown terms (left/right) and
never return response identities (a/b), model names, gold answers, provenance or anybody
else's judgments.

Conventions:

* Authentication: ``Authorization: Token <key>`` (``POST /api/auth/token/`` gives the key) or
  the browser session. Anonymous requests get 401.
* ``GET /api/projects/{id}/next/`` answers **204 No Content** when the annotator's queue is
  empty; the judgment and skip responses carry ``"next": null`` then.
* Errors: 400 with field errors (DRF's shape) or ``{"detail": ...}``; the import answers 400
  with ``{"errors": [{"line", "field", "message"}]}`` and imports nothing.
* ``DELETE`` answers 204, or **409 Conflict** with ``{"detail": ...}`` when the project refuses
  (a pool still in use, a project's last admin); the message says what to do first.
"""
from __future__ import annotations

import io
import json

from django.db import transaction
from django.db.models import Count, Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from . import queue, services
from .imports import ImportValidationError, import_comparisons
from .models import (
    Assignment,
    AssignmentStatus,
    Comparison,
    GoldAnswer,
    Judgment,
    Membership,
    Pool,
    Project,
    Role,
)
from .permissions import (
    CanCreateProject,
    IsAssignmentOwner,
    IsProjectAdmin,
    IsProjectAnnotator,
    IsProjectMember,
    IsProjectReader,
    MemberOrAdminWrites,
    ReaderOrAdminWrites,
)
from .roles import visible_projects
from .serializers import (
    AnnotatorProgressSerializer,
    AssignmentSerializer,
    ComparisonSerializer,
    GoldAnswerSerializer,
    GoneSerializer,
    ImportErrorsSerializer,
    ImportLinesSerializer,
    ImportResultSerializer,
    ImportUploadSerializer,
    JudgmentInputSerializer,
    MembershipSerializer,
    OwnJudgmentDetailSerializer,
    PoolSerializer,
    ProjectProgressSerializer,
    ProjectSerializer,
    QueueItemSerializer,
    SkipResultSerializer,
    SubmitResultSerializer,
    TokenRequestSerializer,
    TokenResultSerializer,
    own_judgment_data,
    queue_item_data,
)

# A header scheme first: DRF answers anonymous requests with the first class's challenge, so
# this gives 401 + ``WWW-Authenticate: Token`` instead of a bare 403.
AUTHENTICATION_CLASSES = sorted(
    api_settings.DEFAULT_AUTHENTICATION_CLASSES, key=lambda cls: issubclass(cls, SessionAuthentication)
)

PROJECT_PARAM = OpenApiParameter("project_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="Project id.")
ASSIGNMENT_PARAM = OpenApiParameter(
    "assignment_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="One of your own assignments."
)

DENIED = OpenApiResponse(description="Not signed in (401) or not allowed in this project (403).")
MISSING = OpenApiResponse(description="No such project or object (or not yours).")


class RefusalSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="Why the change was refused, and what to do first.")


def _refused(exc: services.Refused) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


class ApiView(APIView):
    authentication_classes = AUTHENTICATION_CLASSES

    @property
    def fake(self) -> bool:
        """True while drf-spectacular inspects the view (no request user, no URL objects)."""
        return getattr(self, "swagger_fake_view", False)


def _bool_param(request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int_param(request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationError({name: "Must be an integer."}) from None


# --- auth ------------------------------------------------------------------------------------


@extend_schema(
    tags=["auth"],
    summary="Get an API token",
    description="Exchange a username and password for the user's API token "
    "(send it as `Authorization: Token <key>`).",
    request=TokenRequestSerializer,
    responses={200: TokenResultSerializer, 400: OpenApiResponse(description="Wrong username or password.")},
    auth=[],
)
class TokenView(ObtainAuthToken):
    pass


# --- projects --------------------------------------------------------------------------------


def _roles_by_project(user) -> dict[int, str]:
    if user.is_superuser:
        return {pk: Role.ADMIN for pk in Project.objects.values_list("pk", flat=True)}
    return dict(Membership.objects.filter(user=user).values_list("project_id", "role"))


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
        responses={201: ProjectSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
)
class ProjectListCreate(ApiView, generics.ListCreateAPIView):
    serializer_class = ProjectSerializer
    permission_classes = [CanCreateProject]

    def get_queryset(self):
        if self.fake:
            return Project.objects.none()
        return visible_projects(self.request.user).order_by("name")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not self.fake and self.request.user.is_authenticated:
            context["roles"] = _roles_by_project(self.request.user)
        return context

    def perform_create(self, serializer):
        with transaction.atomic():
            project = serializer.save(created_by=self.request.user)
            Membership.objects.create(project=project, user=self.request.user, role=Role.ADMIN)
        serializer.context["roles"] = {project.pk: Role.ADMIN}


@extend_schema_view(
    get=extend_schema(
        tags=["projects"],
        summary="A project",
        parameters=[PROJECT_PARAM],
        responses={200: ProjectSerializer, 403: DENIED, 404: MISSING},
    ),
    put=extend_schema(
        tags=["projects"],
        summary="Replace a project's settings",
        description="Project admins only.",
        parameters=[PROJECT_PARAM],
        responses={200: ProjectSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
    patch=extend_schema(
        tags=["projects"],
        summary="Change a project's settings",
        description="Project admins only. Changing the overlap re-opens or closes comparisons accordingly.",
        parameters=[PROJECT_PARAM],
        responses={200: ProjectSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
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
        with transaction.atomic():
            project = serializer.save()
            if project.overlap != old_overlap:
                queue.sync_open(project)


# --- pools -----------------------------------------------------------------------------------


class ProjectScoped:
    """Mixin: the serializer context carries the project resolved by the permission."""

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["project"] = self.project
        return context


def _pools(project: Project):
    return Pool.objects.filter(project=project).annotate(
        n_members=Count("members", filter=Q(members__role=Role.ANNOTATOR))
    )


@extend_schema_view(
    get=extend_schema(
        tags=["pools"],
        summary="A project's pools",
        description="Admins and researchers.",
        parameters=[PROJECT_PARAM],
        responses={200: PoolSerializer(many=True), 403: DENIED, 404: MISSING},
    ),
    post=extend_schema(
        tags=["pools"],
        summary="Add a pool",
        description="Admins only. Target shares of a project's pools add up to at most 1.",
        parameters=[PROJECT_PARAM],
        responses={201: PoolSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
)
class PoolListCreate(ProjectScoped, ApiView, generics.ListCreateAPIView):
    serializer_class = PoolSerializer
    permission_classes = [ReaderOrAdminWrites]

    def get_queryset(self):
        if self.fake:
            return Pool.objects.none()
        return _pools(self.project).order_by("name")

    def perform_create(self, serializer):
        serializer.save(project=self.project)


@extend_schema_view(
    get=extend_schema(
        tags=["pools"],
        summary="A pool",
        parameters=[PROJECT_PARAM],
        responses={200: PoolSerializer, 403: DENIED, 404: MISSING},
    ),
    put=extend_schema(
        tags=["pools"],
        summary="Replace a pool",
        parameters=[PROJECT_PARAM],
        responses={200: PoolSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
    patch=extend_schema(
        tags=["pools"],
        summary="Change a pool",
        parameters=[PROJECT_PARAM],
        responses={200: PoolSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
    delete=extend_schema(
        tags=["pools"],
        summary="Delete a pool",
        description=(
            "Admins only, and only a pool nothing uses: no member in it (move them to another pool "
            "first), no judgment made in it (judgments record their pool, so such a pool is kept; set "
            "its target share to 0 instead) and no item of it still being judged. Otherwise 409 with "
            "a message naming what uses it."
        ),
        parameters=[PROJECT_PARAM],
        responses={
            204: OpenApiResponse(description="Deleted."),
            403: DENIED,
            404: MISSING,
            409: OpenApiResponse(RefusalSerializer, description="The pool is in use; nothing was deleted."),
        },
    ),
)
class PoolDetail(ProjectScoped, ApiView, generics.RetrieveUpdateDestroyAPIView):
    serializer_class = PoolSerializer
    permission_classes = [ReaderOrAdminWrites]

    def get_queryset(self):
        if self.fake:
            return Pool.objects.none()
        return _pools(self.project)

    def destroy(self, request, *args, **kwargs):
        try:
            services.delete_pool(self.get_object())
        except services.Refused as exc:
            return _refused(exc)
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
    get=extend_schema(
        tags=["memberships"],
        summary="A project's members",
        description="Admins only.",
        parameters=[PROJECT_PARAM, *MEMBERSHIP_FILTERS],
        responses={200: MembershipSerializer(many=True), 403: DENIED, 404: MISSING},
    ),
    post=extend_schema(
        tags=["memberships"],
        summary="Add a user to the project",
        description="Admins only. Name the user by username, with a role and (for annotators) a pool.",
        parameters=[PROJECT_PARAM],
        responses={201: MembershipSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
)
class MembershipListCreate(ProjectScoped, ApiView, generics.ListCreateAPIView):
    serializer_class = MembershipSerializer
    permission_classes = [IsProjectAdmin]

    def get_queryset(self):
        if self.fake:
            return Membership.objects.none()
        qs = Membership.objects.filter(project=self.project).select_related("user", "pool").order_by("pk")
        role = self.request.query_params.get("role")
        if role:
            qs = qs.filter(role=role)
        pool = _int_param(self.request, "pool")
        if pool is not None:
            qs = qs.filter(pool_id=pool)
        excluded = _bool_param(self.request, "excluded")
        if excluded is not None:
            qs = qs.filter(excluded=excluded)
        return qs


@extend_schema_view(
    get=extend_schema(
        tags=["memberships"],
        summary="A membership",
        parameters=[PROJECT_PARAM],
        responses={200: MembershipSerializer, 403: DENIED, 404: MISSING},
    ),
    put=extend_schema(
        tags=["memberships"],
        summary="Replace a membership",
        parameters=[PROJECT_PARAM],
        responses={200: MembershipSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
    patch=extend_schema(
        tags=["memberships"],
        summary="Change a membership",
        description="Change the role or pool, exclude (`excluded: true`) or include an annotator again, "
        "or set a weight override.",
        parameters=[PROJECT_PARAM],
        responses={200: MembershipSerializer, 400: OpenApiResponse(description="Invalid fields."), 403: DENIED},
    ),
    delete=extend_schema(
        tags=["memberships"],
        summary="Remove a member from the project",
        description=(
            "Admins only. The member's judgments are kept; the items they hold go back to the queue; "
            "they no longer see the project (403 on its endpoints). A project keeps at least one "
            "admin: removing its last admin, yourself included, answers 409."
        ),
        parameters=[PROJECT_PARAM],
        responses={
            204: OpenApiResponse(description="Removed."),
            403: DENIED,
            404: MISSING,
            409: OpenApiResponse(RefusalSerializer, description="The project's last admin; nothing was changed."),
        },
    ),
)
class MembershipDetail(ProjectScoped, ApiView, generics.RetrieveUpdateDestroyAPIView):
    serializer_class = MembershipSerializer
    permission_classes = [IsProjectAdmin]

    def get_queryset(self):
        if self.fake:
            return Membership.objects.none()
        return Membership.objects.filter(project=self.project).select_related("user", "pool")

    def destroy(self, request, *args, **kwargs):
        try:
            services.remove_member(self.get_object(), by=request.user)
        except services.Refused as exc:
            return _refused(exc)
        except Membership.DoesNotExist:
            raise NotFound() from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- comparisons -----------------------------------------------------------------------------


@extend_schema(
    tags=["comparisons"],
    summary="A project's comparisons",
    description="Admins and researchers. Gold answers are not part of this list.",
    parameters=[
        PROJECT_PARAM,
        OpenApiParameter("round", OpenApiTypes.INT, description="Only this round."),
        OpenApiParameter("is_gold", OpenApiTypes.BOOL, description="Only gold (true) or regular (false) ones."),
        OpenApiParameter("is_open", OpenApiTypes.BOOL, description="Only comparisons still taking assignments."),
    ],
    responses={200: ComparisonSerializer(many=True), 403: DENIED, 404: MISSING},
)
class ComparisonList(ApiView, generics.ListAPIView):
    serializer_class = ComparisonSerializer
    permission_classes = [IsProjectReader]

    def get_queryset(self):
        if self.fake:
            return Comparison.objects.none()
        qs = (
            Comparison.objects.filter(project=self.project)
            .select_related("prompt", "response_a", "response_b")
            .order_by("pk")
        )
        round_ = _int_param(self.request, "round")
        if round_ is not None:
            qs = qs.filter(round=round_)
        for name in ("is_gold", "is_open"):
            value = _bool_param(self.request, name)
            if value is not None:
                qs = qs.filter(**{name: value})
        return qs


@extend_schema(
    tags=["comparisons"],
    summary="Gold answers",
    description="Admins only: the known answers of the project's calibration comparisons.",
    parameters=[PROJECT_PARAM],
    responses={200: GoldAnswerSerializer(many=True), 403: DENIED, 404: MISSING},
)
class GoldList(ApiView, generics.ListAPIView):
    serializer_class = GoldAnswerSerializer
    permission_classes = [IsProjectAdmin]

    def get_queryset(self):
        if self.fake:
            return GoldAnswer.objects.none()
        return GoldAnswer.objects.filter(comparison__project=self.project).order_by("comparison_id")


def _errors_response(errors) -> Response:
    return Response(
        {"errors": [{"line": e.line, "field": e.field, "message": e.message} for e in errors]},
        status=status.HTTP_400_BAD_REQUEST,
    )


def _request_errors(serializer_errors) -> Response:
    """Serializer errors of the import request itself, in the import's error shape (line 0)."""
    flat = []
    for name, messages in serializer_errors.items():
        if isinstance(messages, dict):  # errors per list item
            for index, item in messages.items():
                flat.append({"line": int(index) + 1, "field": "", "message": " ".join(map(str, item))})
            continue
        for message in messages if isinstance(messages, list) else [messages]:
            flat.append({"line": 0, "field": "" if name == api_settings.NON_FIELD_ERRORS_KEY else name,
                         "message": str(message)})
    return Response({"errors": flat}, status=status.HTTP_400_BAD_REQUEST)


@extend_schema(
    tags=["comparisons"],
    summary="Import comparisons",
    description=(
        "Admins only. Either upload a JSONL or CSV file (multipart, field `file`) or send JSON "
        '`{"lines": [{...}, ...]}` (a bare list of line objects works too). Each line is '
        '`{"prompt", "response_a", "response_b"}` with optional `model_a`, `model_b`, `metadata` '
        'and `gold` ("a", "b" or "tie"), or TRL/HH style `{"prompt", "chosen", "rejected"}`. '
        "The import is all or nothing: on any error nothing is imported and the answer lists "
        "the errors by line and field."
    ),
    parameters=[PROJECT_PARAM],
    request={
        "multipart/form-data": ImportUploadSerializer,
        "application/json": ImportLinesSerializer,
    },
    responses={
        201: ImportResultSerializer,
        400: OpenApiResponse(ImportErrorsSerializer, description="Nothing was imported."),
        403: DENIED,
        404: MISSING,
    },
    examples=[
        OpenApiExample(
            "JSON lines",
            request_only=True,
            media_type="application/json",
            value={
                "lines": [
                    {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "Hello there.", "model_a": "m1",
                     "model_b": "m2"},
                    {"prompt": "2+2?", "response_a": "4", "response_b": "5", "gold": "a"},
                ]
            },
        ),
        OpenApiExample(
            "Errors",
            response_only=True,
            status_codes=["400"],
            value={"errors": [{"line": 2, "field": "gold", "message": "must be one of a, b, tie"}]},
        ),
    ],
)
class ComparisonImport(ApiView):
    permission_classes = [IsProjectAdmin]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def post(self, request, project_pk: int):
        project = self.project
        if isinstance(request.data, list):
            payload = {"lines": request.data}
            serializer = ImportLinesSerializer(data=payload)
        elif request.FILES or "file" in request.data:
            serializer = ImportUploadSerializer(data=request.data)
        else:
            serializer = ImportLinesSerializer(data=request.data)
        if not serializer.is_valid():
            return _request_errors(serializer.errors)
        data = serializer.validated_data
        if "file" in data:
            upload = data["file"]
            fileobj, filename, fmt = upload, upload.name or "", data.get("format")
        else:
            text = "\n".join(json.dumps(line, ensure_ascii=False) for line in data["lines"])
            fileobj, filename, fmt = io.BytesIO(text.encode("utf-8")), "request.jsonl", "jsonl"
        try:
            result = import_comparisons(
                project,
                fileobj,
                filename=filename,
                fmt=fmt,
                round=data.get("round"),
                allow_empty_responses=data.get("allow_empty_responses", False),
            )
        except ImportValidationError as exc:
            return _errors_response(exc.errors)
        return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


# --- the annotator's queue -------------------------------------------------------------------


def _progress_data(annotator, project: Project) -> tuple[queue.Progress, dict]:
    p = queue.progress(annotator, project)
    return p, {"done": p.done, "remaining": p.remaining}


def _item_data(assignment: Assignment | None, project: Project, progress: queue.Progress, cls=QueueItemSerializer):
    if assignment is None:
        return None
    if cls is QueueItemSerializer:
        return queue_item_data(assignment, project, progress)
    return cls(assignment, context={"project": project, "progress": progress}).data


def _next_data(annotator, project: Project, *, membership=None, held_checked: bool = False) -> tuple[dict | None, dict]:
    """The annotator's next item (None when the queue is empty or they may not be served).
    ``membership`` / ``held_checked``: see ``queue.next_assignment``."""
    try:
        assignment = queue.next_assignment(annotator, project, membership=membership, held_checked=held_checked)
    except queue.NotAnAnnotator:
        assignment = None
    progress, progress_dict = _progress_data(annotator, project)
    return _item_data(assignment, project, progress), progress_dict


@extend_schema(
    tags=["queue"],
    summary="Your current or next item",
    description=(
        "Annotators only. Returns the item you hold, or claims the next one: the prompt and the "
        "two responses as you should show them (left/right). **204 No Content** when there is "
        "nothing left for you."
    ),
    parameters=[PROJECT_PARAM],
    responses={
        200: QueueItemSerializer,
        204: OpenApiResponse(description="Your queue is empty."),
        403: DENIED,
        404: MISSING,
    },
)
class NextItem(ApiView):
    permission_classes = [IsProjectAnnotator]

    def get(self, request, project_pk: int):
        project = self.project
        try:
            assignment = queue.next_assignment(request.user, project)
        except queue.NotAnAnnotator as exc:
            raise PermissionDenied(str(exc)) from None
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        progress, _ = _progress_data(request.user, project)
        return Response(_item_data(assignment, project, progress))


class AssignmentScoped(ApiView):
    permission_classes = [IsAuthenticated, IsAssignmentOwner]

    @property
    def project(self) -> Project:
        return self.assignment.project


@extend_schema(
    tags=["queue"],
    summary="One of your assignments",
    description="Only your own assignments exist for you (404 otherwise).",
    parameters=[ASSIGNMENT_PARAM],
    responses={200: AssignmentSerializer, 403: DENIED, 404: MISSING},
)
class AssignmentDetail(AssignmentScoped):
    def get(self, request, assignment_pk: int):
        assignment = (
            Assignment.objects.select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
            .get(pk=self.assignment.pk)
        )
        progress, _ = _progress_data(request.user, self.project)
        return Response(_item_data(assignment, self.project, progress, cls=AssignmentSerializer))


@extend_schema(
    tags=["queue"],
    summary="Submit a judgment",
    description=(
        "Annotators only, on their own assignment. `choice` is in the terms shown: `left`, "
        "`right`, `tie` (if the project allows ties) or `both_bad`. Answers 201 with the saved "
        "judgment and the next item (`next`, null when the queue is empty), so no second request "
        "is needed. Submitting the same assignment again is harmless: 200 with the first "
        "judgment and the next item, and no second judgment. 409 when the assignment expired "
        "and others filled the comparison meanwhile (the body carries the next item too)."
    ),
    parameters=[ASSIGNMENT_PARAM],
    request=JudgmentInputSerializer,
    responses={
        201: SubmitResultSerializer,
        200: OpenApiResponse(SubmitResultSerializer, description="Already submitted: the first judgment."),
        400: OpenApiResponse(description="Invalid choice, strength or a tie where ties are not allowed."),
        403: DENIED,
        404: MISSING,
        409: OpenApiResponse(GoneSerializer, description="The assignment expired and the item was filled."),
    },
)
class SubmitJudgment(AssignmentScoped):
    def post(self, request, assignment_pk: int):
        assignment, project = self.assignment, self.project
        serializer = JudgmentInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if self.membership is None or self.membership.excluded:  # read with the assignment
            raise PermissionDenied(queue.PAUSED)
        try:
            # The judgment and the next item in one service call (one transaction on PostgreSQL).
            done = queue.submit_and_next(request.user, assignment.pk, project=project, **serializer.validated_data)
        except Assignment.DoesNotExist:
            raise NotFound() from None
        except queue.NotAnAnnotator as exc:
            raise PermissionDenied(str(exc)) from None
        except queue.AssignmentGone as exc:
            item, progress = _next_data(request.user, project)
            return Response({"detail": str(exc), "next": item, "progress": progress}, status=status.HTTP_409_CONFLICT)
        except queue.QueueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        progress, progress_dict = _progress_data(request.user, project)
        body = {
            "judgment": own_judgment_data(done.judgment),
            "next": _item_data(done.next, project, progress),
            "progress": progress_dict,
        }
        return Response(body, status=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK)


@extend_schema(
    tags=["queue"],
    summary="Skip an item",
    description="Give the item back; you will not be served it again. Answers with the next item.",
    parameters=[ASSIGNMENT_PARAM],
    request=None,
    responses={200: SkipResultSerializer, 403: DENIED, 404: MISSING},
)
class SkipAssignment(AssignmentScoped):
    def post(self, request, assignment_pk: int):
        assignment, project, membership = self.assignment, self.project, self.membership
        if membership is None or membership.excluded:  # read with the assignment
            raise PermissionDenied(queue.PAUSED)
        try:
            skipped = queue.skip(request.user, assignment.pk)
        except Assignment.DoesNotExist:
            raise NotFound() from None
        item, progress = _next_data(request.user, project, membership=membership)
        return Response({"assignment_id": skipped.pk, "status": skipped.status, "next": item, "progress": progress})


@extend_schema(
    tags=["queue"],
    summary="Your judgments",
    description="Your own judgments in this project, newest first, in the terms you saw them.",
    parameters=[PROJECT_PARAM],
    responses={200: OwnJudgmentDetailSerializer(many=True), 403: DENIED, 404: MISSING},
)
class MyJudgments(ApiView, generics.ListAPIView):
    serializer_class = OwnJudgmentDetailSerializer
    permission_classes = [IsProjectMember]

    def get_queryset(self):
        if self.fake:
            return Judgment.objects.none()
        return (
            Judgment.objects.filter(project=self.project, annotator=self.request.user)
            .select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
            .order_by("-created_at", "-pk")
        )


# --- progress --------------------------------------------------------------------------------


def project_totals(project: Project) -> dict:
    """Project-wide progress: comparisons, completion, and judgments per pool vs target."""
    regular = Comparison.objects.filter(project=project, is_gold=False).aggregate(
        comparisons=Count("pk"),
        complete=Count("pk", filter=Q(n_judgments__gte=project.overlap)),
        open=Count("pk", filter=Q(is_open=True)),
    )
    judgments = Judgment.objects.filter(project=project)
    counts = judgments.aggregate(total=Count("pk"), gold=Count("pk", filter=Q(comparison__is_gold=True)))
    by_pool = dict(
        judgments.filter(comparison__is_gold=False)
        .values("pool_id")
        .annotate(n=Count("pk"))
        .values_list("pool_id", "n")
    )
    regular_judgments = sum(by_pool.values())
    pools = list(Pool.objects.filter(project=project).order_by("name"))
    share_total = sum(p.target_share for p in pools if p.target_share > 0)
    return {
        "scope": "project",
        "overlap": project.overlap,
        "comparisons": regular["comparisons"],
        "gold_comparisons": Comparison.objects.filter(project=project, is_gold=True).count(),
        "complete": regular["complete"],
        "open": regular["open"],
        "judgments": counts["total"],
        "gold_judgments": counts["gold"],
        "active_assignments": Assignment.objects.filter(project=project, status=AssignmentStatus.ACTIVE).count(),
        "annotators": Membership.objects.filter(project=project, role=Role.ANNOTATOR).count(),
        "pools": [
            {
                "id": p.pk,
                "name": p.name,
                "target_share": (p.target_share / share_total) if share_total > 0 and p.target_share > 0 else 0.0,
                "judgments": by_pool.get(p.pk, 0),
                "share": by_pool.get(p.pk, 0) / regular_judgments if regular_judgments else 0.0,
            }
            for p in pools
        ],
        "unpooled_judgments": by_pool.get(None, 0),
    }


@extend_schema(
    tags=["progress"],
    summary="Progress",
    description=(
        "Annotators get their own numbers (`scope: annotator`); admins and researchers get the "
        "project's totals (`scope: project`) with judgments per pool against the target shares."
    ),
    parameters=[PROJECT_PARAM],
    responses={
        200: PolymorphicProxySerializer(
            component_name="Progress",
            serializers={"annotator": AnnotatorProgressSerializer, "project": ProjectProgressSerializer},
            resource_type_field_name="scope",
        ),
        403: DENIED,
        404: MISSING,
    },
)
class ProgressView(ApiView):
    permission_classes = [IsProjectMember]

    def get(self, request, project_pk: int):
        project = self.project
        if self.project_role == Role.ANNOTATOR:
            p = queue.progress(request.user, project)
            return Response({"scope": "annotator", "done": p.done, "skipped": p.skipped, "remaining": p.remaining})
        return Response(ProjectProgressSerializer(project_totals(project)).data)
