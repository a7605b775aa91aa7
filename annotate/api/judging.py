"""The annotator's side of the REST API: the next item, one's own assignments, submitting and
skipping, and one's own judgments.

Annotators only, on their own assignments (``IsAssignmentOwner``: another annotator's
assignment does not exist for them). Everything is in shown terms (left/right): no response
identities (a/b), model names, gold answers, provenance or anybody else's judgments. A submit
or skip answers with the next item, so the page needs no second request; the queue's rules
(overlap, one judgment per annotator and comparison, expiry) live in ``annotate.queue``.
"""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from .. import queue
from ..models import Assignment, Judgment, Project
from ..permissions import IsAssignmentOwner, IsProjectAnnotator, IsProjectMember
from ..serializers import (
    AssignmentSerializer,
    GoneSerializer,
    JudgmentInputSerializer,
    OwnJudgmentDetailSerializer,
    QueueItemSerializer,
    SkipResultSerializer,
    SubmitResultSerializer,
    judgment_input,
    own_judgment_data,
    queue_item_data,
)
from .base import DENIED, MISSING, ApiView, project_schema

ASSIGNMENT_PARAM = OpenApiParameter(
    "assignment_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="One of your own assignments."
)



def _progress_data(annotator, project: Project, read: queue.Progress | None = None) -> tuple[queue.Progress, dict]:
    """The annotator's progress (``read``: as a service call already read it) and its API form."""
    p = read if read is not None else queue.progress(annotator, project)
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


@project_schema(
    "queue",
    "Your current or next item",
    {
        200: QueueItemSerializer,
        204: OpenApiResponse(description="Your queue is empty."),
        403: DENIED,
        404: MISSING,
    },
    description=(
        "Annotators only. Returns the item you hold, or claims the next one: the prompt and the "
        "two responses as you should show them (left/right). **204 No Content** when there is "
        "nothing left for you."
    ),
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
        data = judgment_input(request.data)  # JudgmentInputSerializer's validated data (400 if invalid)
        if self.membership is None or self.membership.excluded:  # read with the assignment
            raise PermissionDenied(queue.PAUSED)
        try:
            # The judgment and the next item in one service call (one transaction on PostgreSQL).
            done = queue.submit_and_next(request.user, assignment.pk, project=project, with_progress=True, **data)
        except Assignment.DoesNotExist:
            raise NotFound() from None
        except queue.NotAnAnnotator as exc:
            raise PermissionDenied(str(exc)) from None
        except queue.AssignmentGone as exc:
            item, progress = _next_data(request.user, project)
            return Response({"detail": str(exc), "next": item, "progress": progress}, status=status.HTTP_409_CONFLICT)
        except queue.QueueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        progress, progress_dict = _progress_data(request.user, project, done.progress)
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


@project_schema(
    "queue",
    "Your judgments",
    {200: OwnJudgmentDetailSerializer(many=True), 403: DENIED, 404: MISSING},
    description="Your own judgments in this project, newest first, in the terms you saw them.",
)
class MyJudgments(ApiView, generics.ListAPIView):
    serializer_class = OwnJudgmentDetailSerializer
    permission_classes = [IsProjectMember]

    def rows(self):
        return (
            Judgment.objects.filter(project=self.project, annotator=self.request.user)
            .select_related("comparison__prompt", "comparison__response_a", "comparison__response_b")
            .order_by("-created_at", "-pk")
        )
