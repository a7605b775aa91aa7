"""REST endpoints of the unattended loop: ``POST /api/projects/{id}/loops/`` starts one (project
admins; validated by ``training.loop.service.start_loop``, then advanced by a worker task),
``GET`` lists them, ``GET /api/projects/{id}/loops/{loop_id}/`` follows one and its report (a loop
whose process died is recovered first, as every background job shown: docs/jobs.md)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from annotate.api.base import DENIED, MISSING, ApiView, one_or_404, project_schema
from annotate.permissions import IsProjectReader, ReaderOrAdminWrites

from ..api import BAD, _as_400, _model_by_name_or_id
from ..models import LoopRun, Pairing, Recipe
from .service import LOOP_RECIPES, check, start_loop


class StartLoopSerializer(serializers.Serializer):
    rounds = serializers.IntegerField(min_value=1, max_value=50, default=1)
    recipe = serializers.CharField(default=Recipe.SFT_DPO, help_text=f"One of {', '.join(LOOP_RECIPES)}.")
    base_model = serializers.CharField(help_text="Name or id of the model the first round trains from.")
    pairings = serializers.ListField(
        child=serializers.ChoiceField(choices=Pairing.values), required=False,
        help_text="One pairing per sampled round (the last repeats): head_to_head, two_samples, reference.",
    )
    reference_model = serializers.CharField(required=False, allow_blank=True,
                                            help_text="The 'reference' pairing's fixed model (default: the base).")
    pools = serializers.ListField(child=serializers.DictField(), required=False,
                                  help_text="Simulated pools: name, n_annotators, accuracy [low, high], left_bias, "
                                  "length_bias, tie_rate, seconds, abandon_rate.")
    utility = serializers.DictField(required=False, help_text="KeywordUtility fields of the hidden utility.")
    hyperparameters = serializers.DictField(required=False, help_text="TrainConfig fields for every round's run.")
    n_prompts = serializers.IntegerField(min_value=1, max_value=10_000, default=20)
    max_new_tokens = serializers.IntegerField(min_value=1, max_value=512, default=24)
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, default=0.8)
    seed = serializers.IntegerField(default=0)


class LoopRunSerializer(serializers.ModelSerializer):
    base_model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    latest_model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    reference_model = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = LoopRun
        fields = [
            "id", "project", "status", "stage", "round", "rounds", "recipe", "pairings", "base_model",
            "reference_model", "latest_model", "current_run", "current_job", "pools", "utility", "hyperparameters",
            "n_prompts", "message", "error", "report", "created_at", "finished_at",
        ]
        read_only_fields = fields


@extend_schema_view(
    get=project_schema("training", "Unattended loops of a project", {200: LoopRunSerializer(many=True), 403: DENIED,
                                                                     404: MISSING}),
    post=project_schema(
        "training",
        "Start an unattended loop with simulated annotators",
        {202: LoopRunSerializer, 400: BAD, 403: DENIED},
        description="Project admins only. Simulated annotators judge the open comparisons, then each round trains "
        "the latest model on a fresh export and samples the next round, for `rounds` rounds, on the worker.",
        request=StartLoopSerializer,
    ),
)
class LoopListCreate(ApiView, generics.ListAPIView):
    permission_classes = [ReaderOrAdminWrites]
    serializer_class = LoopRunSerializer

    def rows(self):
        return LoopRun.objects.filter(project=self.project).select_related("base_model", "latest_model",
                                                                          "reference_model")

    def list(self, request, *args, **kwargs):
        for loop in self.rows().filter(status__in=["queued", "running"]):
            check(loop)  # a loop whose process died is resumed or failed before it is shown
        return super().list(request, *args, **kwargs)

    def post(self, request, project_pk: int):
        v = self.valid(StartLoopSerializer)
        base = _model_by_name_or_id(v["base_model"], self.project)
        reference = (_model_by_name_or_id(v["reference_model"], self.project, "reference_model")
                     if v.get("reference_model") else None)
        with _as_400():
            loop = start_loop(
                self.project, base_model=base, rounds=v["rounds"], recipe=v["recipe"], pairings=v.get("pairings"),
                reference_model=reference, pools=v.get("pools"), utility=v.get("utility"),
                hyperparameters=v.get("hyperparameters"), n_prompts=v["n_prompts"],
                max_new_tokens=v["max_new_tokens"], temperature=v["temperature"], seed=v["seed"], user=request.user,
            )
        return Response(LoopRunSerializer(loop).data, status=status.HTTP_202_ACCEPTED)


@project_schema(
    "training", "An unattended loop and its report", {200: LoopRunSerializer, 403: DENIED, 404: MISSING},
    parameters=[OpenApiParameter("loop_pk", OpenApiTypes.INT, OpenApiParameter.PATH)],
)
class LoopDetail(ApiView):
    permission_classes = [IsProjectReader]

    def get(self, request, project_pk: int, loop_pk: int):
        loop = one_or_404(LoopRun.objects, "No such loop in this project.", pk=loop_pk, project=self.project)
        check(loop)  # a loop whose process died is resumed or failed before it is shown
        return Response(LoopRunSerializer(loop).data)
