"""The quality REST API: the latest quality report, the annotator table, admin weight actions,
and aggregated labels. Admins and researchers read; only admins change an annotator.

Every endpoint is thin: it checks the role (``annotate.permissions``), calls
:mod:`evaluation.quality.selectors` / :mod:`evaluation.quality.services`, and serializes.
Gold answers stay with admins (as in ``GET /api/projects/{id}/gold/``): for researchers the
aggregated labels leave out the gold comparisons.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from annotate.api.base import DENIED, PROJECT_PARAM, ApiView, int_list_param
from annotate.models import Role
from annotate.permissions import IsProjectMember, IsProjectReader, ReaderOrAdminWrites

from ..stats.aggregation import METHODS
from . import selectors, services
from .scheduling import schedule_recompute

USER_PARAM = OpenApiParameter(
    "user_pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="The annotator's user id."
)
MISSING = OpenApiResponse(description="No such project or annotator.")
TAGS = ["quality"]


# --------------------------------------------------------------------------- serializers


class IntervalSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)


class QualityReportSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(allow_null=True, help_text="queued, running, succeeded or failed")
    progress = serializers.FloatField(allow_null=True)
    message = serializers.CharField(allow_blank=True, allow_null=True)
    n_judgments = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    pending = serializers.DictField(
        allow_null=True, help_text="A queued or running recomputation: id, status, progress."
    )
    data = serializers.DictField(
        allow_null=True,
        help_text="Agreement (overall, per pool, between pools, each {value, low, high}), pool matrix, "
        "agreement "
        "over time, aggregation summary, per-round model win rates. See "
        "evaluation.quality.compute.recompute_quality.",
    )


class RecomputeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    progress = serializers.FloatField()


class AnnotatorQualitySerializer(serializers.Serializer):
    user = serializers.IntegerField()
    username = serializers.CharField()
    pool = serializers.CharField()
    excluded = serializers.BooleanField()
    weight_override = serializers.FloatField(allow_null=True)
    computed_weight = serializers.FloatField(
        allow_null=True, help_text="From bias.annotator_weights (before overrides)."
    )
    weight = serializers.FloatField(
        help_text="Effective weight: 0 if excluded, else the override, else computed."
    )
    n_judgments = serializers.IntegerField()
    n_gold = serializers.IntegerField()
    gold_accuracy = serializers.FloatField(allow_null=True)
    gold_accuracy_low = serializers.FloatField(allow_null=True)
    gold_accuracy_high = serializers.FloatField(allow_null=True)
    estimated_accuracy = serializers.FloatField(allow_null=True)
    position_bias = serializers.FloatField(allow_null=True)
    position_bias_se = serializers.FloatField(allow_null=True)
    length_bias = serializers.FloatField(allow_null=True)
    length_bias_se = serializers.FloatField(allow_null=True)
    tie_rate = serializers.FloatField(allow_null=True)
    both_bad_rate = serializers.FloatField(allow_null=True)
    median_seconds = serializers.FloatField(allow_null=True)
    flags = serializers.ListField(child=serializers.CharField())
    below_threshold = serializers.BooleanField()
    computed_at = serializers.DateTimeField(allow_null=True)


class AnnotatorUpdateSerializer(serializers.Serializer):
    excluded = serializers.BooleanField(required=False, help_text="Exclude (true) or include again (false).")
    weight_override = serializers.FloatField(
        required=False, allow_null=True, min_value=0.0, max_value=1.0, help_text="0–1, or null to clear."
    )

    def validate(self, attrs):
        if not attrs:
            raise ValidationError("Give excluded and/or weight_override.")
        return attrs


class LabelSerializer(serializers.Serializer):
    comparison = serializers.IntegerField()
    p_a = serializers.FloatField(allow_null=True, help_text="Null when undecided.")
    p_b = serializers.FloatField(allow_null=True, help_text="Null when undecided.")
    p_tie = serializers.FloatField(allow_null=True, help_text="Null when undecided.")
    label = serializers.ChoiceField(choices=["a", "b", "tie"], allow_null=True, help_text="Null when undecided.")
    undecided = serializers.BooleanField(
        help_text="Every judgment on it is by an annotator whose effective weight is 0: no label."
    )
    confidence = serializers.FloatField(allow_null=True, help_text="Null when undecided.")
    n_judgments = serializers.IntegerField()
    is_gold = serializers.BooleanField(required=False, help_text="Admins only.")
    pool_disagreement = serializers.FloatField(
        allow_null=True,
        help_text="Largest total-variation distance between two pools' vote shares (null: < 2 pools).",
    )


class OwnAccuracySerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    visible = serializers.BooleanField()
    accuracy = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)
    computed_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)


# --------------------------------------------------------------------------- helpers


def _annotator_dict(row: selectors.AnnotatorRow) -> dict:
    q = row.quality

    def g(name):
        return getattr(q, name) if q is not None else None

    return {
        "user": row.user_id,
        "username": row.username,
        "pool": row.pool,
        "excluded": row.excluded,
        "weight_override": row.override,
        "computed_weight": q.weight if q is not None else None,
        "weight": row.weight,
        "n_judgments": g("n_judgments") or 0,
        "n_gold": g("n_gold") or 0,
        **{
            name: g(name)
            for name in (
                "gold_accuracy",
                "gold_accuracy_low",
                "gold_accuracy_high",
                "estimated_accuracy",
                "position_bias",
                "position_bias_se",
                "length_bias",
                "length_bias_se",
                "tie_rate",
                "both_bad_rate",
                "median_seconds",
            )
        },
        "flags": row.flags,
        "below_threshold": row.below_threshold,
        "computed_at": g("computed_at"),
    }


def _report_dict(report, pending) -> dict:
    return {
        "id": report.pk if report else None,
        "status": report.status if report else None,
        "progress": report.progress if report else None,
        "message": report.message if report else None,
        "n_judgments": report.n_judgments if report else None,
        "created_at": report.created_at if report else None,
        "finished_at": report.finished_at if report else None,
        "pending": {"id": pending.pk, "status": pending.status, "progress": pending.progress}
        if pending
        else None,
        "data": report.data if report else None,
    }


# --------------------------------------------------------------------------- views


class QualityReportView(ApiView):
    permission_classes = [IsProjectReader]

    @extend_schema(
        tags=TAGS,
        summary="Latest quality report",
        description="The newest finished computation of the project's agreement and annotator statistics, "
        "and any "
        "queued or running recomputation. All fields are null before the first computation.",
        parameters=[PROJECT_PARAM],
        responses={200: QualityReportSerializer, 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int):
        project = self.project
        return Response(_report_dict(selectors.latest_report(project), selectors.pending_report(project)))


class QualityRecomputeView(ApiView):
    permission_classes = [IsProjectReader]

    @extend_schema(
        tags=TAGS,
        summary="Recompute quality now",
        description="Queues a recomputation (Celery) and answers 202 with the queued report; poll "
        "GET …/quality/ for its progress. Reuses a report that is already queued.",
        parameters=[PROJECT_PARAM],
        request=None,
        responses={202: RecomputeSerializer, 403: DENIED, 404: MISSING},
    )
    def post(self, request, project_pk: int):
        report = schedule_recompute(self.project, countdown=0)
        return Response(
            {"id": report.pk, "status": report.status, "progress": report.progress},
            status=status.HTTP_202_ACCEPTED,
        )


class AnnotatorQualityList(ApiView):
    permission_classes = [IsProjectReader]

    @extend_schema(
        tags=TAGS,
        summary="Annotator quality table",
        description="One row per annotator: gold accuracy with its 95% credible interval, Dawid–Skene "
        "accuracy, "
        "position and length bias, tie rate, speed, flags, and the computed and effective weights. "
        "`sort` is one of " + ", ".join(selectors.SORT_KEYS) + "; `dir` asc or desc.",
        parameters=[
            PROJECT_PARAM,
            OpenApiParameter("sort", OpenApiTypes.STR, enum=list(selectors.SORT_KEYS)),
            OpenApiParameter("dir", OpenApiTypes.STR, enum=["asc", "desc"]),
        ],
        responses={200: AnnotatorQualitySerializer(many=True), 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int):
        sort = request.query_params.get("sort", "annotator")
        if sort not in selectors.SORT_KEYS:
            raise ValidationError({"sort": f"one of {', '.join(selectors.SORT_KEYS)}"})
        table = selectors.annotator_table(
            self.project, sort=sort, descending=request.query_params.get("dir") == "desc"
        )
        return self.paginated(
            table,
            lambda page: (
                AnnotatorQualitySerializer(
                    [_annotator_dict(r) for r in selectors.annotator_rows_for(self.project, None, page)],
                    many=True,
                ).data
            ),
        )


class AnnotatorQualityDetail(ApiView):
    permission_classes = [ReaderOrAdminWrites]

    def _row(self, user_pk: int) -> selectors.AnnotatorRow:
        row = selectors.annotator_row(self.project, None, int(user_pk))
        if row is None:
            raise NotFound("No such annotator in this project.")
        return row

    @extend_schema(
        tags=TAGS,
        summary="One annotator's quality",
        parameters=[PROJECT_PARAM, USER_PARAM],
        responses={200: AnnotatorQualitySerializer, 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int, user_pk: int):
        return Response(AnnotatorQualitySerializer(_annotator_dict(self._row(user_pk))).data)

    @extend_schema(
        tags=TAGS,
        summary="Exclude an annotator or override their weight",
        description="Admins only. `excluded: true` stops the queue serving them (their judgments are kept "
        "and weigh "
        "0); `weight_override` in [0, 1] replaces the computed weight, `null` clears it.",
        parameters=[PROJECT_PARAM, USER_PARAM],
        request=AnnotatorUpdateSerializer,
        responses={
            200: AnnotatorQualitySerializer,
            400: OpenApiResponse(description="Invalid values."),
            403: DENIED,
            404: MISSING,
        },
    )
    def patch(self, request, project_pk: int, user_pk: int):
        body = AnnotatorUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        self._row(user_pk)
        try:
            if "excluded" in body.validated_data:
                services.set_excluded(self.project, int(user_pk), body.validated_data["excluded"])
            if "weight_override" in body.validated_data:
                services.set_weight_override(
                    self.project, int(user_pk), body.validated_data["weight_override"]
                )
        except services.NotAMember as exc:
            raise NotFound(str(exc)) from None
        return Response(AnnotatorQualitySerializer(_annotator_dict(self._row(user_pk))).data)


class AggregatedLabelList(ApiView):
    permission_classes = [IsProjectReader]

    @extend_schema(
        tags=TAGS,
        summary="Aggregated labels",
        description="Per judged comparison: P(A better), P(B better), P(tie), the label, its confidence "
        "and how much "
        "the pools disagree, by the chosen aggregation method. Excluded annotators are left out; `majority` "
        "weighs each vote by the annotator's effective weight. Gold comparisons (clamped to their answer) "
        "are "
        "listed for admins only.",
        parameters=[
            PROJECT_PARAM,
            OpenApiParameter("method", OpenApiTypes.STR, enum=list(METHODS), default="dawid_skene"),
            OpenApiParameter(
                "pool_balanced",
                OpenApiTypes.BOOL,
                default=False,
                description="Weight pools equally on each comparison rather than by headcount.",
            ),
            OpenApiParameter("round", OpenApiTypes.INT, many=True, description="Only these rounds."),
        ],
        responses={
            200: LabelSerializer(many=True),
            400: OpenApiResponse(description="Unknown method or round."),
            403: DENIED,
            404: MISSING,
        },
    )
    def get(self, request, project_pk: int):
        method = request.query_params.get("method", "dawid_skene")
        if method not in METHODS:
            raise ValidationError({"method": f"one of {', '.join(METHODS)}"})
        pool_balanced = (request.query_params.get("pool_balanced") or "").lower() in {
            "1",
            "true",
            "yes",
            "on",
        }
        rounds = int_list_param(request, "round")
        try:
            labels = services.aggregated_labels(
                self.project, method, pool_balanced=pool_balanced, rounds=rounds
            )
        except ValueError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        if self.project_role != Role.ADMIN:
            labels = [
                {k: v for k, v in lab.items() if k != "is_gold"} for lab in labels if not lab["is_gold"]
            ]
        return self.paginated(labels, lambda page: LabelSerializer(page, many=True).data)


class OwnAccuracyView(ApiView):
    permission_classes = [IsProjectMember]

    @extend_schema(
        tags=TAGS,
        summary="My gold accuracy",
        description="The signed-in member's own gold accuracy, only when the project shows it "
        "(`show_accuracy_after`) and they have answered enough calibration items. Never which items were "
        "gold.",
        parameters=[PROJECT_PARAM],
        responses={200: OwnAccuracySerializer, 403: DENIED, 404: MISSING},
    )
    def get(self, request, project_pk: int):
        own = selectors.annotator_own_accuracy(request.user, self.project)
        return Response(OwnAccuracySerializer(own.as_dict()).data)
