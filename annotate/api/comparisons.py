"""A project's comparisons over the REST API: the list, the gold answers, and the imports.

Admins and researchers list comparisons (never with their gold answers); only admins read and
set the gold answers (``annotate.gold``: one flag on one comparison) and import. The imports are ``annotate.imports.import_comparisons`` (optionally with
a file's preferences as a source's votes) and ``annotate.imports.import_judgments`` (votes
already collected), all or nothing: a file or a JSON list of lines in, 201 with the counts, or
400 with every error by line and field and nothing imported.
"""
from __future__ import annotations

import io
import json

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.settings import api_settings

from .. import gold
from ..imports import ImportValidationError, import_comparisons, import_judgments
from ..models import Comparison, GoldAnswer
from ..permissions import IsProjectAdmin, IsProjectReader
from ..serializers import (
    ComparisonImportLinesSerializer,
    ComparisonImportUploadSerializer,
    ComparisonSerializer,
    GoldAnswerSerializer,
    ImportErrorsSerializer,
    ImportResultSerializer,
    JudgmentImportLinesSerializer,
    JudgmentImportResultSerializer,
    JudgmentImportUploadSerializer,
)
from .base import DENIED, INVALID, MISSING, ApiView, bool_param, int_param, project_schema



@project_schema(
    "comparisons",
    "A project's comparisons",
    {200: ComparisonSerializer(many=True), 403: DENIED, 404: MISSING},
    description="Admins and researchers. Gold answers are not part of this list.",
    parameters=[OpenApiParameter("round", OpenApiTypes.INT, description="Only this round."), OpenApiParameter("is_gold", OpenApiTypes.BOOL, description="Only gold (true) or regular (false) ones."), OpenApiParameter("is_open", OpenApiTypes.BOOL, description="Only comparisons still taking assignments.")],
)
class ComparisonList(ApiView, generics.ListAPIView):
    serializer_class = ComparisonSerializer
    permission_classes = [IsProjectReader]

    def rows(self):
        qs = (
            Comparison.objects.filter(project=self.project)
            .select_related("prompt", "response_a", "response_b")
            .order_by("pk")
        )
        round_ = int_param(self.request, "round")
        if round_ is not None:
            qs = qs.filter(round=round_)
        for name in ("is_gold", "is_open"):
            value = bool_param(self.request, name)
            if value is not None:
                qs = qs.filter(**{name: value})
        return qs


class GoldSetSerializer(serializers.Serializer):
    comparisons = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), allow_empty=False, max_length=10_000,
        help_text="Ids of the project's comparisons.",
    )
    answer = serializers.ChoiceField(
        choices=["a", "b", "tie", "none"],
        help_text='The gold answer in each comparison\'s stored order; "none" makes them regular again.',
    )


class GoldSetResultSerializer(serializers.Serializer):
    changed = serializers.IntegerField(help_text="Comparisons made gold, re-answered or made regular.")
    gold = GoldAnswerSerializer(many=True, help_text="The gold answers of the comparisons sent.")


@extend_schema_view(
    get=project_schema(
        "comparisons",
        "Gold answers",
        {200: GoldAnswerSerializer(many=True), 403: DENIED, 404: MISSING},
        description="Admins only: the known answers of the project's calibration comparisons.",
    ),
    post=project_schema(
        "comparisons",
        "Set or remove gold answers",
        {200: GoldSetResultSerializer, 400: INVALID, 403: DENIED, 404: MISSING},
        description='Admins only. `{"comparisons": [ids], "answer": "a" | "b" | "tie"}` makes existing '
        "comparisons gold with that answer (in each comparison's stored A/B order; already-gold ones get "
        'the new answer); `"answer": "none"` makes them regular again. Gold is one flag on one '
        "comparison: nothing is copied. All or nothing: an id of another project changes nothing.",
        request=GoldSetSerializer,
    ),
)
class GoldList(ApiView, generics.ListAPIView):
    serializer_class = GoldAnswerSerializer
    permission_classes = [IsProjectAdmin]

    def rows(self):
        return GoldAnswer.objects.filter(comparison__project=self.project).order_by("comparison_id")

    def post(self, request, project_pk: int):
        values = self.valid(GoldSetSerializer)
        try:
            if values["answer"] == "none":
                changed = gold.unset_gold(self.project, values["comparisons"])
            else:
                changed = gold.set_gold(self.project, values["comparisons"], values["answer"])
        except gold.GoldError as exc:
            field = "answer" if "answer" in str(exc) else "comparisons"
            return Response({field: [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        answers = GoldAnswer.objects.filter(comparison_id__in=values["comparisons"]).order_by("comparison_id")
        return Response({"changed": changed, "gold": GoldAnswerSerializer(answers, many=True).data})


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


@project_schema(
    "comparisons",
    "Import comparisons",
    {
        201: ImportResultSerializer,
        400: OpenApiResponse(ImportErrorsSerializer, description="Nothing was imported."),
        403: DENIED,
        404: MISSING,
    },
    description=(
        "Admins only. Either upload a JSONL or CSV file (multipart, field `file`) or send JSON "
        '`{"lines": [{...}, ...]}` (a bare list of line objects works too). Each line is '
        '`{"prompt", "response_a", "response_b"}` with optional `model_a`, `model_b`, `metadata` '
        'and `gold` ("a", "b" or "tie"), or TRL/HH style `{"prompt", "chosen", "rejected"}`. '
        "The import is all or nothing: on any error nothing is imported and the answer lists "
        "the errors by line and field."
    ),
    request={
        "multipart/form-data": ComparisonImportUploadSerializer,
        "application/json": ComparisonImportLinesSerializer,
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
        parsed = _read_import(request, ComparisonImportUploadSerializer, ComparisonImportLinesSerializer)
        if isinstance(parsed, Response):
            return parsed
        data, fileobj, filename, fmt = parsed
        try:
            result = import_comparisons(
                self.project,
                fileobj,
                filename=filename,
                fmt=fmt,
                round=data.get("round"),
                allow_empty_responses=data.get("allow_empty_responses", False),
                votes_source=data.get("votes_source") or "",
            )
        except ImportValidationError as exc:
            return _errors_response(exc.errors)
        return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


def _read_import(request, upload_serializer, lines_serializer):
    """``(validated data, file object, file name, format)`` of an import request (a multipart
    upload, ``{"lines": [...]}`` or a bare list of lines), or the 400 response -- in the import's
    ``{"errors": [...]}`` shape, a body that is not JSON included (line 0)."""
    try:
        body = request.data
    except ParseError as exc:
        return Response(
            {"errors": [{"line": 0, "field": "", "message": str(exc.detail)}]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(body, list):
        serializer = lines_serializer(data={"lines": body})
    elif request.FILES or "file" in body:
        serializer = upload_serializer(data=body)
    else:
        serializer = lines_serializer(data=body)
    if not serializer.is_valid():
        return _request_errors(serializer.errors)
    data = serializer.validated_data
    if "file" in data:
        upload = data["file"]
        return data, upload, upload.name or "", data.get("format")
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in data["lines"])
    return data, io.BytesIO(text.encode("utf-8")), "request.jsonl", "jsonl"


@project_schema(
    "comparisons",
    "Import votes (judgments)",
    {
        201: JudgmentImportResultSerializer,
        400: OpenApiResponse(ImportErrorsSerializer, description="Nothing was imported."),
        403: DENIED,
        404: MISSING,
    },
    description=(
        "Admins only. Votes already collected elsewhere, one per line: upload a JSONL or CSV file "
        '(multipart, field `file`) or send JSON `{"lines": [{...}, ...]}`. Each line is '
        '`{"prompt", "response_a", "response_b", "annotator_id", "label"}` (label `a`, `b`, `tie` or '
        "`both_bad`, in terms of the line's own response_a/response_b). Each annotator id becomes an "
        "inactive annotator in a pool named after the source. A vote that lists the two responses in "
        "the other order than the stored comparison is mapped to the stored order and counted in "
        "`reoriented`. All or nothing, errors by line and field."
    ),
    request={
        "multipart/form-data": JudgmentImportUploadSerializer,
        "application/json": JudgmentImportLinesSerializer,
    },
)
class JudgmentImport(ApiView):
    permission_classes = [IsProjectAdmin]
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def post(self, request, project_pk: int):
        parsed = _read_import(request, JudgmentImportUploadSerializer, JudgmentImportLinesSerializer)
        if isinstance(parsed, Response):
            return parsed
        data, fileobj, filename, fmt = parsed
        try:
            result = import_judgments(
                self.project,
                fileobj,
                filename=filename,
                fmt=fmt,
                source=data.get("source") or "",
                round=data.get("round"),
                on_duplicate=data.get("on_duplicate") or "error",
                allow_empty_responses=data.get("allow_empty_responses", True),
            )
        except ImportValidationError as exc:
            return _errors_response(exc.errors)
        return Response(JudgmentImportResultSerializer(result).data, status=status.HTTP_201_CREATED)
