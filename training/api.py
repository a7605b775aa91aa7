"""The training REST API: runs (launch, poll, metrics, cancel, samples, next round) and the
model registry. Every endpoint checks the project role through ``annotate.permissions`` and
calls one function of ``training.services`` -- the same ones the pages call.

* Admins launch, cancel and sample the next round; admins and researchers read runs and metrics;
  annotators get 403.
* Errors: 400 with ``{"field": ["message"]}`` or ``{"detail": ...}``, nothing created.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from annotate.api.base import DENIED, MISSING, ApiView, int_param, one_or_404, project_schema
from annotate.models import Membership, Role
from annotate.permissions import IsProjectAdmin, IsProjectReader, ReaderOrAdminWrites
from evaluation.models import Export

from .models import (
    GenerationSample,
    JobStatus,
    ModelVersion,
    Recipe,
    RunStatus,
    SamplingJob,
    TrainingMetric,
    TrainingRun,
)
from .resume import resume_run
from .services.errors import TrainingError
from .services.registry import register_model_for, visible_models
from .services.runs import cancel_run, launch_run
from .services.sampling import AGAINST, queue_sample_round, request_sample

RUN_PARAM = OpenApiParameter(
    "run_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="Training run id."
)
BAD = OpenApiResponse(description="Invalid input; nothing was created.")


# --- serializers -----------------------------------------------------------------------------


def _status_field(choices):
    """A read-only status listing its values in the description. (Not an enum: drf-spectacular
    would name it ``StatusEnum``, colliding with the other apps' ``status`` enums.)"""
    return serializers.CharField(read_only=True, help_text="One of: " + ", ".join(choices.values))


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "path",
            "parent",
            "is_adapter",
            "training_run",
            "project",
            "round",
            "description",
            "metrics",
            "created_at",
        ]
        read_only_fields = fields


class RegisterModelSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(
        max_length=1000,
        help_text="Absolute path of a local Hugging Face model folder, inside one of the "
        "PREFLOOP_MODEL_ROOTS folders (superusers: anywhere).",
    )
    parent = serializers.CharField(required=False, allow_blank=True, help_text="Name of the parent version.")
    description = serializers.CharField(required=False, allow_blank=True, default="")


class TrainingRunSerializer(serializers.ModelSerializer):
    base_model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    output_model = ModelVersionSerializer(read_only=True, allow_null=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    status = _status_field(RunStatus)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "project",
            "export",
            "recipe",
            "base_model",
            "hyperparameters",
            "status",
            "progress",
            "step",
            "total_steps",
            "eta_seconds",
            "cancel_requested",
            "error",
            "summary",
            "device",
            "output_model",
            "out_dir",
            "attempts",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class TrainingRunDetailSerializer(TrainingRunSerializer):
    logs_tail = serializers.SerializerMethodField()

    class Meta(TrainingRunSerializer.Meta):
        fields = TrainingRunSerializer.Meta.fields + ["logs_tail"]
        read_only_fields = fields

    def get_logs_tail(self, run) -> str:
        return "\n".join((run.logs or "").splitlines()[-100:])


class LaunchRunSerializer(serializers.Serializer):
    recipe = serializers.ChoiceField(choices=Recipe.choices, default=Recipe.SFT_DPO)
    base_model = serializers.CharField(help_text="Name (or id) of a registered model version.")
    export = serializers.IntegerField(
        required=False, allow_null=True, help_text="A built export of the project; omit to build a fresh one."
    )
    hyperparameters = serializers.DictField(
        required=False, default=dict, help_text='TrainConfig fields, e.g. {"lr": 1e-5, "max_steps": 200}.'
    )
    reward_model = serializers.CharField(
        required=False, allow_blank=True,
        help_text="Recipes ppo / sft+dpo+ppo: name of a registered reward model (same tokenizer as the base).",
    )


class MetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrainingMetric
        fields = ["step", "data", "created_at"]


class SampleRequestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=4000)
    max_new_tokens = serializers.IntegerField(min_value=1, max_value=512, default=48)


class GenerationSampleSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    status = _status_field(JobStatus)

    class Meta:
        model = GenerationSample
        fields = [
            "id",
            "model_version",
            "run",
            "prompt",
            "max_new_tokens",
            "output",
            "status",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class SampleRoundRequestSerializer(serializers.Serializer):
    n_prompts = serializers.IntegerField(min_value=1, max_value=10_000, default=20)
    against = serializers.ChoiceField(
        choices=["parent", "self", "model"],
        default="parent",
        help_text="'parent': head to head, the new model vs. the model it was trained from; 'self': two "
        "samples of the new model; 'model': vs. the fixed reference model named in compare_model.",
    )
    compare_model = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="With against='model': the reference model version's name (or id).",
    )
    max_new_tokens = serializers.IntegerField(min_value=1, max_value=512, default=64)
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, default=0.8)


class SamplingJobSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    compare_to = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    status = _status_field(JobStatus)

    class Meta:
        model = SamplingJob
        fields = [
            "id",
            "project",
            "model_version",
            "compare_to",
            "pairing",
            "run",
            "n_prompts",
            "round",
            "status",
            "progress",
            "n_created",
            "n_empty",
            "n_identical",
            "n_existing",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


@contextmanager
def _as_400():
    """A ``TrainingError`` from the service becomes a 400 naming its field (nothing was created)."""
    try:
        yield
    except TrainingError as exc:
        raise ValidationError({exc.field or "detail": [exc.message]}) from None


def _model_by_name_or_id(value: str, project, field: str = "base_model") -> ModelVersion:
    """A registered model shared by all projects or belonging to ``project`` (as on the form)."""
    qs = ModelVersion.objects.filter(Q(project__isnull=True) | Q(project=project))
    found = qs.filter(name=value).first()
    if found is None and str(value).isdigit():
        found = qs.filter(pk=int(value)).first()
    if found is None:
        raise ValidationError({field: [f"no registered model named {value!r}"]})
    return found


# --- runs ------------------------------------------------------------------------------------


@extend_schema_view(
    get=project_schema(
        "training",
        "Training runs of a project",
        {200: TrainingRunSerializer(many=True), 403: DENIED, 404: MISSING},
        description="Admins and researchers.",
    ),
    post=project_schema(
        "training",
        "Launch a training run",
        {201: TrainingRunSerializer, 400: BAD, 403: DENIED},
        description="Project admins only. Validated before any compute (hyperparameters against "
        "TrainConfig, the base model folder, the export's size, the effective sample size of its "
        "weights against min_pairs, prompt lengths); then queued on the gpu worker. The run's "
        "`summary.data` keeps the training pairs, weight sum and effective sample size.",
        request=LaunchRunSerializer,
    ),
)
class RunListCreate(ApiView, generics.ListAPIView):
    permission_classes = [ReaderOrAdminWrites]
    serializer_class = TrainingRunSerializer

    def rows(self):
        return TrainingRun.objects.filter(project=self.project).select_related(
            "base_model", "output_model", "created_by"
        )

    def post(self, request, project_pk: int):
        values = self.valid(LaunchRunSerializer)
        base = _model_by_name_or_id(values["base_model"], self.project)
        export = None
        if values.get("export") is not None:
            export = Export.objects.filter(pk=values["export"], project=self.project).first()
            if export is None:
                raise ValidationError({"export": [f"no export {values['export']} in this project"]})
        with _as_400():
            run = launch_run(
                self.project,
                base_model=base,
                recipe=values["recipe"],
                export=export,
                hyperparameters={**(values.get("hyperparameters") or {}),
                                 **({"reward_model": values["reward_model"]} if values.get("reward_model") else {})},
                created_by=request.user,
            )
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)


def _run(view, run_pk: int, *, trained: bool = False) -> TrainingRun:
    """The project's run (404 otherwise); with ``trained``, 400 unless it has an output model."""
    run = one_or_404(
        TrainingRun.objects.select_related("base_model", "output_model", "created_by"),
        "No such run in this project.",
        pk=run_pk,
        project=view.project,
    )
    if trained and run.output_model is None:
        raise ValidationError({"detail": ["this run has no output model yet"]})
    return run


@project_schema(
    "training",
    "A training run (status, progress, summary, log tail)",
    {200: TrainingRunDetailSerializer, 403: DENIED, 404: MISSING},
    parameters=[RUN_PARAM],
)
class RunDetail(ApiView):
    permission_classes = [IsProjectReader]

    def get(self, request, project_pk: int, run_pk: int):
        return Response(TrainingRunDetailSerializer(_run(self, run_pk)).data)


@project_schema(
    "training",
    "A run's metrics time series",
    {200: MetricSerializer(many=True), 403: DENIED, 404: MISSING},
    description="One row per logged step. `since` returns only steps after it (for polling).",
    parameters=[RUN_PARAM, OpenApiParameter("since", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False)],
)
class RunMetrics(ApiView):
    permission_classes = [IsProjectReader]
    pagination_class = None  # a time series, answered whole; clients poll with ``since``

    def get(self, request, project_pk: int, run_pk: int):
        run = _run(self, run_pk)
        qs = TrainingMetric.objects.filter(run=run).order_by("step")
        since = int_param(request, "since", ["Must be an integer."])
        if since is not None:
            qs = qs.filter(step__gt=since)
        return Response(MetricSerializer(qs, many=True).data)


@project_schema(
    "training",
    "Cancel a run",
    {200: TrainingRunSerializer, 400: BAD, 403: DENIED, 404: MISSING},
    description="Project admins only. The run stops before its next step and keeps its last checkpoint.",
    request=None,
    parameters=[RUN_PARAM],
)
class RunCancel(ApiView):
    permission_classes = [IsProjectAdmin]

    def post(self, request, project_pk: int, run_pk: int):
        with _as_400():
            run = cancel_run(_run(self, run_pk), request.user)
        return Response(TrainingRunSerializer(run).data)


@project_schema(
    "training",
    "Resume a cancelled or failed run",
    {200: TrainingRunSerializer, 400: BAD, 403: DENIED, 404: MISSING},
    description="Project admins only. The run is queued again and continues from its last checkpoint "
    "(from the start when it has none); 400 for a run that is not cancelled or failed.",
    request=None,
    parameters=[RUN_PARAM],
)
class RunResume(ApiView):
    permission_classes = [IsProjectAdmin]

    def post(self, request, project_pk: int, run_pk: int):
        with _as_400():
            run = resume_run(_run(self, run_pk), request.user)
        return Response(TrainingRunSerializer(run).data)


@project_schema(
    "training",
    "Generate a sample from a run's output model",
    {202: GenerationSampleSerializer, 400: BAD, 403: DENIED, 404: MISSING},
    description="Admins and researchers. Queued on the gpu worker; poll the returned sample.",
    request=SampleRequestSerializer,
    parameters=[RUN_PARAM],
)
class RunSample(ApiView):
    permission_classes = [IsProjectReader]

    def post(self, request, project_pk: int, run_pk: int):
        run = _run(self, run_pk, trained=True)
        data = self.valid(SampleRequestSerializer)
        with _as_400():
            sample = request_sample(
                run.output_model,
                data["prompt"],
                run=run,
                user=request.user,
                max_new_tokens=data["max_new_tokens"],
            )
        return Response(GenerationSampleSerializer(sample).data, status=status.HTTP_202_ACCEPTED)


@project_schema(
    "training",
    "A generated sample",
    {200: GenerationSampleSerializer, 403: DENIED, 404: MISSING},
    parameters=[OpenApiParameter("sample_pk", OpenApiTypes.INT, OpenApiParameter.PATH)],
)
class SampleDetail(ApiView):
    permission_classes = [IsProjectReader]

    def get(self, request, project_pk: int, sample_pk: int):
        sample = one_or_404(
            GenerationSample.objects, "No such sample in this project.", pk=sample_pk, run__project=self.project
        )
        return Response(GenerationSampleSerializer(sample).data)


@project_schema(
    "training",
    "Sample the next annotation round from a run's output model",
    {202: SamplingJobSerializer, 400: BAD, 403: DENIED, 404: MISSING},
    description="Project admins only. New responses become round `current_round + 1` comparisons.",
    request=SampleRoundRequestSerializer,
    parameters=[RUN_PARAM],
)
class RunSampleRound(ApiView):
    permission_classes = [IsProjectAdmin]

    def post(self, request, project_pk: int, run_pk: int):
        run = _run(self, run_pk, trained=True)
        v = self.valid(SampleRoundRequestSerializer)
        with _as_400():
            job = queue_sample_round(
                self.project,
                run.output_model,
                n_prompts=v["n_prompts"],
                pairing=AGAINST[v["against"]],
                compare_to=(
                    _model_by_name_or_id(v["compare_model"], self.project, "compare_model")
                    if v.get("compare_model") else None
                ),
                run=run,
                user=request.user,
                max_new_tokens=v["max_new_tokens"],
                temperature=v["temperature"],
            )
        return Response(SamplingJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


@project_schema(
    "training",
    "A next-round sampling job",
    {200: SamplingJobSerializer, 403: DENIED, 404: MISSING},
    parameters=[OpenApiParameter("job_pk", OpenApiTypes.INT, OpenApiParameter.PATH)],
)
class SamplingJobDetail(ApiView):
    permission_classes = [IsProjectReader]

    def get(self, request, project_pk: int, job_pk: int):
        job = one_or_404(
            SamplingJob.objects, "No such sampling job in this project.", pk=job_pk, project=self.project
        )
        return Response(SamplingJobSerializer(job).data)


# --- model registry --------------------------------------------------------------------------


def _is_admin_somewhere(user) -> bool:
    return (
        user.is_superuser or user.is_staff or Membership.objects.filter(user=user, role=Role.ADMIN).exists()
    )


def _is_reader_somewhere(user) -> bool:
    return _is_admin_somewhere(user) or Membership.objects.filter(user=user, role=Role.RESEARCHER).exists()


@extend_schema_view(
    get=extend_schema(
        tags=["models"],
        summary="Registered model versions",
        description="Admins and researchers: the shared base models and those of the projects in "
        "which you are an admin or a researcher (superusers: all).",
        responses={200: ModelVersionSerializer(many=True), 403: DENIED},
    ),
    post=extend_schema(
        tags=["models"],
        summary="Register a local model folder",
        description="Admins only. The folder must hold a Hugging Face causal LM (config.json, "
        "weights, tokenizer) or a PEFT adapter on a local base folder, and lie inside one of the "
        "PREFLOOP_MODEL_ROOTS folders (superusers may register any folder).",
        request=RegisterModelSerializer,
        responses={201: ModelVersionSerializer, 400: BAD, 403: DENIED},
    ),
)
class ModelListCreate(ApiView, generics.ListAPIView):
    serializer_class = ModelVersionSerializer

    def rows(self):
        if not _is_reader_somewhere(self.request.user):
            raise PermissionDenied("Only admins and researchers see the model registry.")
        return visible_models(self.request.user).select_related("parent").order_by("pk")

    def post(self, request):
        if not _is_admin_somewhere(request.user):
            raise PermissionDenied("Only admins may register models.")
        v = self.valid(RegisterModelSerializer)
        parent = None
        if v.get("parent"):
            parent = visible_models(request.user).filter(name=v["parent"]).first()
            if parent is None:
                raise ValidationError({"parent": [f"no registered model named {v['parent']!r}"]})
        with _as_400():
            version = register_model_for(
                request.user,
                v["name"],
                v["path"],
                parent=parent,
                description=v.get("description", ""),
            )
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)
