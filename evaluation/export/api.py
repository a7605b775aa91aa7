"""The export REST API: list, create, poll and download calibrated exports.

Admins and researchers of the project (``IsProjectReader``); annotators get 403 and
anonymous requests 401. Creating an export changes no project data: it queues a build.
An export that includes gold answers (``include_gold``, admins only) can be downloaded by
admins only, as gold answers stay with admins everywhere in the API. Aggregated labels are
served by the quality API (``GET /api/projects/{id}/quality/labels/``).
"""

from __future__ import annotations

from django.db import transaction
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings

from annotate.api.base import DENIED, PROJECT_PARAM, ApiView
from annotate.permissions import IsProjectReader

from ..models import Export
from ..stats.aggregation import METHODS
from .downloads import DOWNLOADS, available_downloads, download_file, may_download
from .forms import METHOD_LABELS
from .options import DEFAULT_FORMATS, FORMATS, STYLES, ExportError
from .services import check_export, create_export

TAGS = ["exports"]
EXPORT_PARAM = OpenApiParameter(
    "export_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="Export id."
)
WHAT_PARAM = OpenApiParameter(
    "what",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    enum=list(DOWNLOADS),
    description="A format (jsonl, parquet, csv, judgments; hf as a .tar.gz of the datasets folder), `card` "
    "(README.md), `metadata` (metadata.json), or the whole folder as `zip` or `tar.gz`.",
)
MISSING = OpenApiResponse(description="No such project or export.")


# --------------------------------------------------------------------------- serializers


class ExportCreateSerializer(serializers.Serializer):
    """The options of a new export (all optional; see the dataset card for their meaning)."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    rounds = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        required=False,
        default=list,
        help_text="Only comparisons of these rounds (default: all).",
    )
    pools = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        default=list,
        help_text="Only judgments made in these pools, by id or name (default: all).",
    )
    method = serializers.ChoiceField(
        choices=[(m, METHOD_LABELS.get(m, m)) for m in METHODS], default="dawid_skene"
    )
    pool_balanced = serializers.BooleanField(
        default=False, help_text="Each pool weighs the same on a comparison."
    )
    min_confidence = serializers.FloatField(
        min_value=0.0,
        max_value=1.0,
        default=0.0,
        help_text="Drop comparisons whose largest posterior is below this.",
    )
    include_ties = serializers.BooleanField(
        default=False, help_text="Write ties with label `tie`, p_chosen 0.5."
    )
    include_both_bad = serializers.BooleanField(
        default=False, help_text="Write both-bad with label `both_bad`."
    )
    include_judgments = serializers.BooleanField(default=False, help_text="Also write judgments.jsonl.")
    include_rationales = serializers.BooleanField(
        default=False, help_text="Free-text rationales in judgments.jsonl (off by default)."
    )
    include_excluded = serializers.BooleanField(
        default=False, help_text="Keep excluded annotators' judgments."
    )
    include_gold = serializers.BooleanField(
        default=False, help_text="Include gold comparisons and their answers (admins only)."
    )
    test_fraction = serializers.FloatField(
        min_value=0.0, max_value=0.99, default=0.1, help_text="Share of prompts in the test split."
    )
    seed = serializers.IntegerField(min_value=0, default=0, help_text="Seed of the split.")
    stable_pseudonyms = serializers.BooleanField(
        default=False,
        help_text="Same annotator pseudonyms as the project's other exports made with this option.",
    )
    style = serializers.ChoiceField(
        choices=list(STYLES),
        default="auto",
        help_text="Prompt format: conversational when any prompt is a chat (auto).",
    )
    formats = serializers.ListField(
        child=serializers.ChoiceField(choices=list(FORMATS)),
        required=False,
        default=lambda: list(DEFAULT_FORMATS),
        help_text="Any of jsonl, parquet, hf, csv, judgments.",
    )


class ExportSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    downloads = serializers.SerializerMethodField(help_text="Download name -> URL (once built).")
    url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id",
            "url",
            "project",
            "name",
            "status",
            "progress",
            "step",
            "error",
            "params",
            "n_rows",
            "content_hash",
            "stats",
            "downloads",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_created_by(self, obj) -> str | None:
        return obj.created_by.get_username() if obj.created_by_id else None

    def _abs(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url

    def get_url(self, obj) -> str:
        return self._abs(reverse("export-api:export-detail", args=[obj.project_id, obj.pk]))

    def get_downloads(self, obj) -> dict[str, str]:
        return {
            what: self._abs(reverse("export-api:export-download", args=[obj.project_id, obj.pk, what]))
            for what in available_downloads(obj)
        }


class ExportSummarySerializer(ExportSerializer):
    """A list row: the same without the statistics."""

    class Meta(ExportSerializer.Meta):
        fields = [f for f in ExportSerializer.Meta.fields if f != "stats"]
        read_only_fields = fields


# --------------------------------------------------------------------------- views


class _ExportView(ApiView):
    permission_classes = [IsProjectReader]

    def _export(self, export_pk: int) -> Export:
        export = get_object_or_404(
            Export.objects.select_related("created_by"), pk=export_pk, project=self.project
        )
        check_export(export)  # a build whose worker died: re-queued or failed, never "running"
        return export


class ExportListCreate(_ExportView):
    @extend_schema(
        tags=TAGS,
        summary="List the project's exports",
        description="Newest first, paginated (`limit`, `offset`). Admins and researchers.",
        parameters=[PROJECT_PARAM],
        responses={200: ExportSummarySerializer(many=True), 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int):
        qs = (
            Export.objects.filter(project=self.project)
            .select_related("created_by")
            .order_by("-created_at", "-pk")
        )
        return self.paginated(
            qs, lambda page: ExportSummarySerializer(page, many=True, context={"request": request}).data
        )

    @extend_schema(
        tags=TAGS,
        summary="Create an export",
        description="Validates the options, checks that the filters leave data, and queues the build; poll "
        "the returned `url` until `status` is `succeeded` (or `failed`, with the reason in `error`). "
        "Filters that leave no comparison are a 400 naming the filter. Admins and researchers.",
        parameters=[PROJECT_PARAM],
        request=ExportCreateSerializer,
        responses={
            201: ExportSerializer,
            400: OpenApiResponse(description="Invalid options, or nothing to export."),
            403: DENIED,
            404: MISSING,
        },
    )
    def post(self, request, project_pk: int):
        body = ExportCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        name = data.pop("name", "")
        try:
            with transaction.atomic():
                export = create_export(self.project, request.user, data, name=name)
        except ExportError as exc:
            key = (
                exc.field
                if exc.field in ExportCreateSerializer().fields
                else api_settings.NON_FIELD_ERRORS_KEY
            )
            raise ValidationError({key: [str(exc)]}) from None
        out = ExportSerializer(export, context={"request": request}).data
        return Response(out, status=status.HTTP_201_CREATED, headers={"Location": out["url"]})


class ExportDetail(_ExportView):
    @extend_schema(
        tags=TAGS,
        summary="Get (poll) an export",
        description="Status, progress (0–1) and current step while building; statistics, content hash and "
        "download URLs once built; the reason in `error` if it failed.",
        parameters=[PROJECT_PARAM, EXPORT_PARAM],
        responses={200: ExportSerializer, 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int, export_pk: int):
        return Response(ExportSerializer(self._export(export_pk), context={"request": request}).data)


class ExportDownload(_ExportView):
    @extend_schema(
        tags=TAGS,
        summary="Download an export file",
        description="One file of a built export, or the whole folder as an archive. Exports that include "
        "gold answers can be downloaded by admins only. The media type follows `what`: "
        + ", ".join(f"`{what}` {ctype}" for what, (_, ctype) in DOWNLOADS.items())
        + ".",
        parameters=[PROJECT_PARAM, EXPORT_PARAM, WHAT_PARAM],
        responses={
            # metadata.json is a JSON object; every other download is a file's bytes
            **{
                (200, ctype): OpenApiTypes.OBJECT if ctype == "application/json" else OpenApiTypes.BINARY
                for ctype in sorted({c for _, c in DOWNLOADS.values()})
            },
            403: DENIED,
            404: OpenApiResponse(description="No such export, not built yet, or no such file in it."),
        },
    )
    def get(self, request, project_pk: int, export_pk: int, what: str):
        export = self._export(export_pk)
        if not may_download(export, self.project_role):
            raise PermissionDenied("This export includes gold answers: only project admins may download it.")
        try:
            path, filename, content_type = download_file(export, what)
        except ExportError as exc:
            raise NotFound(str(exc)) from None
        return FileResponse(
            open(path, "rb"), as_attachment=True, filename=filename, content_type=content_type
        )
