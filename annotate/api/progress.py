"""Progress over the REST API: an annotator's own counts, or the project's totals for admins
and researchers (``annotate.selectors.project_totals``)."""
from __future__ import annotations

from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework.response import Response

from .. import queue
from ..models import Role
from ..permissions import IsProjectMember
from ..selectors import project_totals
from ..serializers import AnnotatorProgressSerializer, ProjectProgressSerializer
from .base import DENIED, MISSING, ApiView, project_schema


@project_schema(
    "progress",
    "Progress",
    {
        200: PolymorphicProxySerializer(
            component_name="Progress",
            serializers={"annotator": AnnotatorProgressSerializer, "project": ProjectProgressSerializer},
            resource_type_field_name="scope",
        ),
        403: DENIED,
        404: MISSING,
    },
    description=(
        "Annotators get their own numbers (`scope: annotator`); admins and researchers get the "
        "project's totals (`scope: project`) with judgments per pool against the target shares."
    ),
)
class ProgressView(ApiView):
    permission_classes = [IsProjectMember]

    def get(self, request, project_pk: int):
        project = self.project
        if self.project_role == Role.ANNOTATOR:
            p = queue.progress(request.user, project)
            return Response({"scope": "annotator", "done": p.done, "skipped": p.skipped, "remaining": p.remaining})
        return Response(ProjectProgressSerializer(project_totals(project)).data)
