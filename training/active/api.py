"""``/api/projects/{id}/priorities/``: the project's pair order and its latest priority job
(``GET``, admins and researchers; a job whose worker died is recovered first), and "Recompute
priorities" (``POST``, admins: queues a job, or returns the one already queued). The pair order
itself is the project's ``pair_order`` field (``PATCH /api/projects/{id}/``). Priorities are
never part of any response (annotators never see them; nobody needs them over the API)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema_view
from rest_framework import serializers, status
from rest_framework.response import Response

from annotate.api.base import DENIED, MISSING, ApiView, RefusalSerializer, project_schema, refused
from annotate.models import PairOrder
from annotate.permissions import ReaderOrAdminWrites

from ..models import JobStatus, PriorityJob
from .services import latest_job, request_priorities


class PriorityJobSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    status = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(JobStatus.values))

    class Meta:
        model = PriorityJob
        fields = ["id", "pair_order", "reason", "status", "progress", "n_total", "n_done", "n_unscored",
                  "model_version", "message", "error", "created_at", "finished_at"]
        read_only_fields = fields


class PrioritiesSerializer(serializers.Serializer):
    pair_order = serializers.ChoiceField(choices=PairOrder.choices, read_only=True)
    job = PriorityJobSerializer(read_only=True, allow_null=True, help_text="The latest priority computation.")


@extend_schema_view(
    get=project_schema("projects", "Active pair selection: the pair order and the latest priority job",
                       {200: PrioritiesSerializer, 403: DENIED, 404: MISSING},
                       description="Admins and researchers."),
    post=project_schema(
        "projects", "Recompute the priorities of the open comparisons",
        {202: PrioritiesSerializer, 403: DENIED,
         409: OpenApiResponse(RefusalSerializer, description="The project is in arrival order: nothing to compute.")},
        description="Admins only. Queues a priority computation for the project's active pair order (or returns the "
        "one already queued); poll `GET` for its progress.",
        request=None,
    ),
)
class Priorities(ApiView):
    permission_classes = [ReaderOrAdminWrites]

    def get(self, request, project_pk: int):
        return Response(PrioritiesSerializer({"pair_order": self.project.pair_order, "job": latest_job(self.project)}).data)

    def post(self, request, project_pk: int):
        job = request_priorities(self.project, reason="on demand", user=request.user)
        if job is None:
            return refused("The project serves comparisons in arrival order: there are no priorities to compute. "
                           "Set its pair_order to margin or disagreement first.")
        return Response(PrioritiesSerializer({"pair_order": self.project.pair_order, "job": job}).data,
                        status=status.HTTP_202_ACCEPTED)
