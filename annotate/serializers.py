"""REST serializers for the annotate app.

What an annotator can receive is deliberately narrow: the queue item (``QueueItemSerializer``)
and their own judgments (``OwnJudgmentSerializer``) speak only in *shown* terms (left/right),
never name response A or B, a model, a gold answer, a comparison's provenance
(``source_preference``), its metadata or anybody else's judgment. Admin and researcher
serializers never carry gold answers either; ``GoldAnswerSerializer`` is admin-only.
"""
from __future__ import annotations

import math

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import (
    MAX_ASSIGNMENT_TIMEOUT_S,
    MAX_OVERLAP,
    MAX_ROUND,
    Assignment,
    AssignmentStatus,
    Choice,
    Comparison,
    GoldAnswer,
    Judgment,
    Membership,
    Pool,
    Project,
    Prompt,
    Response,
    Role,
    Strength,
)
from .queue import SHOWN_CHOICES, shown_pair

# Sums of target shares may exceed 1 by rounding only.
SHARE_EPSILON = 1e-6
MAX_RATIONALE_CHARS = 10_000


def to_shown(a_on_left: bool | None, choice: str) -> str | None:
    """A stored choice (a/b/tie/both_bad) in the terms the annotator saw (left/right/…).

    The inverse of ``annotate.queue.to_underlying``. None for an a/b choice whose display
    order is unknown (``a_on_left`` NULL: an imported vote); tie and both_bad need no order.
    """
    if choice in (Choice.A, Choice.B) and a_on_left is None:
        return None
    if choice == Choice.A:
        return "left" if a_on_left else "right"
    if choice == Choice.B:
        return "right" if a_on_left else "left"
    return str(choice)


# --- projects, pools, memberships ------------------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    """A project. Annotators receive only ``id``, ``name``, ``instructions``, ``allow_ties``,
    ``role`` and ``created_at``; the queue settings are for admins and researchers."""

    role = serializers.SerializerMethodField(help_text="Your role in this project.")

    ANNOTATOR_FIELDS = ("id", "name", "instructions", "allow_ties", "role", "created_at")

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "instructions",
            "overlap",
            "gold_rate",
            "allow_ties",
            "assignment_timeout_s",
            "show_accuracy_after",
            "license",
            "current_round",
            "pair_order",
            "role",
            "created_at",
        ]
        read_only_fields = ["id", "created_at", "role"]
        extra_kwargs = {
            "overlap": {"min_value": 1, "max_value": MAX_OVERLAP},
            "assignment_timeout_s": {"min_value": 10, "max_value": MAX_ASSIGNMENT_TIMEOUT_S},
            "current_round": {"max_value": MAX_ROUND},
            "show_accuracy_after": {"max_value": MAX_ROUND},
        }

    @extend_schema_field(
        serializers.ChoiceField(choices=Role.choices, allow_null=True, help_text="Your role in this project.")
    )
    def get_role(self, project: Project) -> str | None:
        roles = self.context.get("roles") or {}
        return roles.get(project.pk)

    def to_representation(self, project: Project):
        data = super().to_representation(project)
        if data.get("role") == Role.ANNOTATOR:
            data = {k: v for k, v in data.items() if k in self.ANNOTATOR_FIELDS}
        return data

    def validate_overlap(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("The overlap must be at least 1.")
        return value

    def validate_gold_rate(self, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise serializers.ValidationError("The gold rate is a share between 0 and 1.")
        return value

    def validate_assignment_timeout_s(self, value: int) -> int:
        if value < 10:
            raise serializers.ValidationError("The assignment timeout must be at least 10 seconds.")
        return value


class PoolSerializer(serializers.ModelSerializer):
    members = serializers.SerializerMethodField(help_text="Annotators in this pool.")

    class Meta:
        model = Pool
        fields = ["id", "name", "attributes", "target_share", "members"]
        read_only_fields = ["id", "members"]

    def get_members(self, pool: Pool) -> int:
        n = getattr(pool, "n_members", None)
        return n if n is not None else pool.members.filter(role=Role.ANNOTATOR).count()

    def validate_attributes(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Attributes are an object of names and values.")
        return value

    def validate_target_share(self, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise serializers.ValidationError("The target share is between 0 and 1.")
        return value

    def validate(self, attrs):
        project: Project = self.context["project"]
        others = Pool.objects.filter(project=project)
        if self.instance is not None:
            others = others.exclude(pk=self.instance.pk)
        name = attrs.get("name", getattr(self.instance, "name", None))
        if name is not None and others.filter(name=name).exists():
            raise serializers.ValidationError({"name": "A pool with this name already exists in the project."})
        share = attrs.get("target_share", getattr(self.instance, "target_share", 0.0))
        total = share + sum(others.values_list("target_share", flat=True))
        if total > 1.0 + SHARE_EPSILON:
            raise serializers.ValidationError(
                {"target_share": f"The project's target shares would add up to {total:.3g}; they must not exceed 1."}
            )
        return attrs


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(
        source="user.username", help_text="The user to add; cannot be changed once the membership exists."
    )
    pool = serializers.PrimaryKeyRelatedField(
        queryset=Pool.objects.all(), allow_null=True, required=False, help_text="The annotator's pool (id)."
    )

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "pool", "excluded", "weight_override"]
        read_only_fields = ["id"]

    def validate_username(self, value: str):
        if self.instance is not None:
            if value != self.instance.user.username:
                raise serializers.ValidationError(
                    "The user of a membership cannot be changed; add a new membership instead."
                )
            return value
        from .services import Refused, user_to_add

        try:
            user_to_add(self.context["project"], value)
        except Refused as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate_pool(self, pool: Pool | None):
        project: Project = self.context["project"]
        if pool is not None and pool.project_id != project.pk:
            raise serializers.ValidationError("This pool belongs to another project.")
        return pool

    def validate_weight_override(self, value):
        if value is not None and not 0.0 <= value <= 1.0:
            raise serializers.ValidationError("A weight is between 0 and 1.")
        return value

    def validate(self, attrs):
        project: Project = self.context["project"]
        if self.instance is not None and self.instance.role == Role.ADMIN:
            new_role = attrs.get("role", self.instance.role)
            if new_role != Role.ADMIN and not (
                Membership.objects.filter(project=project, role=Role.ADMIN).exclude(pk=self.instance.pk).exists()
            ):
                raise serializers.ValidationError({"role": "A project keeps at least one admin."})
        return attrs

    def create(self, validated_data):
        user_data = validated_data.pop("user")
        user = get_user_model().objects.get(username=user_data["username"])
        return Membership.objects.create(project=self.context["project"], user=user, **validated_data)

    def update(self, instance, validated_data):
        validated_data.pop("user", None)
        return super().update(instance, validated_data)


# --- comparisons and import ------------------------------------------------------------------


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "text", "messages"]


class ResponseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Response
        fields = ["id", "text", "model_name", "round"]


class ComparisonSerializer(serializers.ModelSerializer):
    """A comparison for admins and researchers: responses A and B with model names, counts.
    Never its gold answer nor the provenance preference of TRL/HH imports."""

    prompt = PromptSerializer(read_only=True)
    response_a = ResponseSerializer(read_only=True)
    response_b = ResponseSerializer(read_only=True)

    class Meta:
        model = Comparison
        fields = [
            "id",
            "round",
            "prompt",
            "response_a",
            "response_b",
            "metadata",
            "is_gold",
            "is_open",
            "slots_taken",
            "n_judgments",
            "created_at",
        ]
        read_only_fields = fields


class GoldAnswerSerializer(serializers.ModelSerializer):
    class Meta:
        model = GoldAnswer
        fields = ["comparison", "answer"]
        read_only_fields = fields


IMPORT_FORMATS = ("jsonl", "csv")


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A JSONL or CSV file.")
    format = serializers.ChoiceField(
        choices=IMPORT_FORMATS, required=False, help_text="Detected from the file name when left out."
    )
    round = serializers.IntegerField(
        min_value=0, max_value=MAX_ROUND, required=False,
        help_text="The round of the new comparisons; default: the project's.",
    )
    allow_empty_responses = serializers.BooleanField(
        required=False, default=False, help_text="Import lines whose response is empty; prompts never may be."
    )


class ImportLinesSerializer(serializers.Serializer):
    lines = serializers.ListField(
        child=serializers.JSONField(),
        allow_empty=False,
        help_text='The JSONL lines as objects: {"prompt", "response_a", "response_b"[, "model_a", "model_b", '
        '"metadata", "gold"]} or {"prompt", "chosen", "rejected"}. Line numbers in errors count from 1.',
    )
    round = serializers.IntegerField(
        min_value=0, max_value=MAX_ROUND, required=False,
        help_text="The round of the new comparisons; default: the project's.",
    )
    allow_empty_responses = serializers.BooleanField(
        required=False, default=False, help_text="Import lines whose response is empty; prompts never may be."
    )


class ImportResultSerializer(serializers.Serializer):
    lines = serializers.IntegerField()
    created = serializers.IntegerField(help_text="New comparisons.")
    duplicates = serializers.IntegerField(help_text="Lines whose comparison already existed.")
    gold = serializers.IntegerField(help_text="New gold comparisons.")
    gold_marked = serializers.IntegerField(
        help_text="Existing comparisons that gold lines made gold (or gave a new answer): a stored pair "
        "is flagged, never imported a second time."
    )
    gold_twin_lines = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Lines (counted in duplicates) whose prompt and response texts are a gold comparison's (under "
        "other model names or in another round): joined to it, never imported as a regular copy of a gold pair.",
    )
    prompts_created = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    votes_source = serializers.CharField(help_text="The source whose votes were imported ('' for none).")
    votes_created = serializers.IntegerField(help_text="New votes of that source.")
    votes_reoriented = serializers.IntegerField(
        help_text="Of those, votes whose comparison was stored with the responses in the other order "
        "(mapped to the stored order)."
    )


_VOTES_SOURCE_HELP = (
    "Also import each chosen/rejected line's preference as the vote of this source: the "
    "pseudo-annotator 'source:NAME' in its own pool NAME. Every line must then be a chosen/rejected line."
)


class ComparisonImportUploadSerializer(ImportUploadSerializer):
    votes_source = serializers.CharField(required=False, allow_blank=True, max_length=100, help_text=_VOTES_SOURCE_HELP)


class ComparisonImportLinesSerializer(ImportLinesSerializer):
    votes_source = serializers.CharField(required=False, allow_blank=True, max_length=100, help_text=_VOTES_SOURCE_HELP)


ON_DUPLICATE = ("error", "first", "last")


class _JudgmentImportOptions(serializers.Serializer):
    source = serializers.CharField(
        required=False, allow_blank=True, max_length=100,
        help_text="Recorded on every judgment (default: each line's `source`, else the file name).",
    )
    on_duplicate = serializers.ChoiceField(
        choices=ON_DUPLICATE, required=False, default="error",
        help_text="Two votes by one annotator on one comparison: an error, or keep the first or the last.",
    )
    round = serializers.IntegerField(
        min_value=0, max_value=MAX_ROUND, required=False,
        help_text="The round of new comparisons; default: the project's.",
    )
    allow_empty_responses = serializers.BooleanField(
        required=False, default=True, help_text="Accept votes on empty responses (a model that said nothing)."
    )


class JudgmentImportUploadSerializer(_JudgmentImportOptions):
    file = serializers.FileField(help_text="A JSONL or CSV file of votes.")
    format = serializers.ChoiceField(
        choices=IMPORT_FORMATS, required=False, help_text="Detected from the file name when left out."
    )


class JudgmentImportLinesSerializer(_JudgmentImportOptions):
    lines = serializers.ListField(
        child=serializers.JSONField(),
        allow_empty=False,
        help_text='The vote lines as objects: {"prompt", "response_a", "response_b", "annotator_id", '
        '"label": "a"|"b"|"tie"|"both_bad"[, "model_a", "model_b", "strength", "display", "pool", '
        '"seconds", "rationale", "source", "item_id"]}. Line numbers in errors count from 1.',
    )


class JudgmentImportResultSerializer(serializers.Serializer):
    lines = serializers.IntegerField()
    judgments_created = serializers.IntegerField()
    duplicates = serializers.IntegerField(help_text="Lines whose judgment already existed or was dropped.")
    reoriented = serializers.IntegerField(
        help_text="Judgments whose line listed the two responses in the other order than the stored "
        "comparison: their label (a/b) and display order were mapped to the stored order."
    )
    comparisons_created = serializers.IntegerField()
    comparisons_reused = serializers.IntegerField()
    annotators_created = serializers.IntegerField()
    memberships_created = serializers.IntegerField()
    pools_created = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    display_unknown = serializers.IntegerField(help_text="Judgments stored without a display order.")
    warnings = serializers.SerializerMethodField()

    def get_warnings(self, result) -> list[str]:
        return [str(w) for w in result.warnings[:100]]


class LineErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="1-based line number; 0 for the file or request as a whole.")
    field = serializers.CharField(allow_blank=True, help_text="The field at fault; empty for the whole line.")
    message = serializers.CharField()


class ImportErrorsSerializer(serializers.Serializer):
    errors = LineErrorSerializer(many=True)


# --- the annotator's queue -------------------------------------------------------------------


class ShownResponseSerializer(serializers.Serializer):
    text = serializers.CharField()


class QueueProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField(help_text="Items this annotator has judged.")
    remaining = serializers.IntegerField(help_text="Items still open to this annotator.")


class QueueItemSerializer(serializers.Serializer):
    """One item to judge, exactly as the annotator sees it. Serializes an ``Assignment`` whose
    comparison, prompt and responses are loaded; needs ``progress`` and ``project`` in context.
    """

    assignment_id = serializers.IntegerField(source="pk")
    prompt = serializers.CharField(source="comparison.prompt.text")
    prompt_messages = serializers.JSONField(
        source="comparison.prompt.messages", allow_null=True, help_text="The prompt as chat messages, if a chat."
    )
    left = serializers.SerializerMethodField()
    right = serializers.SerializerMethodField()
    allow_ties = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField()
    progress = serializers.SerializerMethodField()

    @extend_schema_field(ShownResponseSerializer)
    def get_left(self, assignment: Assignment):
        return {"text": shown_pair(assignment)[0].text}

    @extend_schema_field(ShownResponseSerializer)
    def get_right(self, assignment: Assignment):
        return {"text": shown_pair(assignment)[1].text}

    def get_allow_ties(self, assignment: Assignment) -> bool:
        return bool(self.context["project"].allow_ties)

    @extend_schema_field(QueueProgressSerializer)
    def get_progress(self, assignment: Assignment):
        p = self.context["progress"]
        return {"done": p.done, "remaining": p.remaining}


_DATETIME = serializers.DateTimeField()


def queue_item_data(assignment: Assignment, project: Project, progress) -> dict:
    """``QueueItemSerializer(assignment, context=…).data`` without building a serializer: the
    submit answers with the next item on every judgment (tests check that both agree)."""
    left, right = shown_pair(assignment)
    prompt = assignment.comparison.prompt
    return {
        "assignment_id": assignment.pk,
        "prompt": prompt.text,
        "prompt_messages": prompt.messages,
        "left": {"text": left.text},
        "right": {"text": right.text},
        "allow_ties": bool(project.allow_ties),
        "expires_at": _DATETIME.to_representation(assignment.expires_at),
        "progress": {"done": progress.done, "remaining": progress.remaining},
    }


class AssignmentSerializer(QueueItemSerializer):
    """One of the annotator's own assignments, in shown terms, with its status."""

    status = serializers.ChoiceField(choices=AssignmentStatus.choices)


class JudgmentInputSerializer(serializers.Serializer):
    choice = serializers.ChoiceField(
        choices=SHOWN_CHOICES, help_text="In the terms shown: the left or right response, a tie, or both bad."
    )
    strength = serializers.ChoiceField(
        choices=Strength.choices,
        allow_null=True,
        required=False,
        help_text="1 slightly, 2 clearly, 3 much better; ignored for tie and both_bad.",
    )
    rationale = serializers.CharField(
        allow_blank=True, required=False, default="", max_length=MAX_RATIONALE_CHARS, trim_whitespace=True
    )
    seconds = serializers.FloatField(
        min_value=0, allow_null=True, required=False, help_text="Time spent; the server's clock when implausible."
    )


_STRENGTHS = frozenset(Strength.values)
_INPUT_FIELDS = ("choice", "strength", "rationale", "seconds")


def judgment_input(data) -> dict:
    """``JudgmentInputSerializer(data=data)``'s ``validated_data`` (a 400 ``ValidationError``
    with its field errors when invalid), without building the serializer for the usual body.

    The submit runs this on every judgment, and a serializer instance deep-copies its four
    fields first. A JSON object whose fields are all plainly valid (``choice`` one of the
    shown choices, ``strength`` 1-3 or null, ``rationale`` a string of at most
    ``MAX_RATIONALE_CHARS`` after trimming without NUL or surrogate characters, ``seconds`` a
    finite number ≥ 0 or null; other keys ignored, as the serializer ignores them) gives
    exactly what the serializer gives; anything else (strings for numbers, booleans, form
    data, anything invalid) goes through the serializer itself (tests compare the two)."""
    if type(data) is dict and type(data.get("choice")) is str and data["choice"] in SHOWN_CHOICES:
        out = {"choice": data["choice"]}
        fast = True
        if "strength" in data:
            strength = data["strength"]
            fast = strength is None or (type(strength) is int and strength in _STRENGTHS)
            out["strength"] = strength
        rationale = data.get("rationale", "")
        if fast and type(rationale) is str:
            rationale = rationale.strip()
            try:
                rationale.encode()  # surrogates do not encode
            except UnicodeEncodeError:
                fast = False
            fast = fast and len(rationale) <= MAX_RATIONALE_CHARS and "\x00" not in rationale
            out["rationale"] = rationale
        else:
            fast = False
        if fast and "seconds" in data:
            seconds = data["seconds"]
            if seconds is not None:
                if type(seconds) not in (int, float):
                    fast = False
                else:
                    try:
                        seconds = float(seconds)
                    except OverflowError:
                        fast = False
                    else:
                        fast = math.isfinite(seconds) and seconds >= 0
            out["seconds"] = seconds
        if fast:
            return {k: out[k] for k in _INPUT_FIELDS if k in out}
    serializer = JudgmentInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class OwnJudgmentSerializer(serializers.ModelSerializer):
    """A judgment of the requesting annotator, in the terms they saw.

    ``choice`` is null for an imported vote for one response whose display order was not
    recorded (left/right unknown); judgments made in the app always know it.
    """

    assignment_id = serializers.IntegerField(allow_null=True, read_only=True)
    choice = serializers.SerializerMethodField()

    class Meta:
        model = Judgment
        fields = ["id", "assignment_id", "choice", "strength", "rationale", "seconds", "created_at"]
        read_only_fields = fields

    @extend_schema_field(
        serializers.ChoiceField(
            choices=SHOWN_CHOICES,
            allow_null=True,
            help_text="In the terms shown; null when an imported vote's display order is unknown.",
        )
    )
    def get_choice(self, judgment: Judgment) -> str | None:
        return to_shown(judgment.a_on_left, judgment.choice)


def own_judgment_data(judgment: Judgment) -> dict:
    """``OwnJudgmentSerializer(judgment).data`` without building a serializer (see
    ``queue_item_data``)."""
    return {
        "id": judgment.pk,
        "assignment_id": judgment.assignment_id,
        "choice": to_shown(judgment.a_on_left, judgment.choice),
        "strength": judgment.strength,
        "rationale": judgment.rationale,
        "seconds": None if judgment.seconds is None else float(judgment.seconds),
        "created_at": _DATETIME.to_representation(judgment.created_at),
    }


class OwnJudgmentDetailSerializer(OwnJudgmentSerializer):
    """An own judgment with the prompt and the two responses as they were shown."""

    prompt = serializers.CharField(source="comparison.prompt.text", read_only=True)
    left = serializers.SerializerMethodField()
    right = serializers.SerializerMethodField()

    class Meta(OwnJudgmentSerializer.Meta):
        fields = ["id", "assignment_id", "prompt", "left", "right", "choice", "strength", "rationale", "seconds",
                  "created_at"]
        read_only_fields = fields

    def _pair(self, judgment: Judgment):
        """(left, right) as shown; an unknown display order (NULL) is given as stored, A first."""
        c = judgment.comparison
        if judgment.a_on_left is False:
            return c.response_b, c.response_a
        return c.response_a, c.response_b

    @extend_schema_field(ShownResponseSerializer)
    def get_left(self, judgment: Judgment):
        return {"text": self._pair(judgment)[0].text}

    @extend_schema_field(ShownResponseSerializer)
    def get_right(self, judgment: Judgment):
        return {"text": self._pair(judgment)[1].text}


class SubmitResultSerializer(serializers.Serializer):
    judgment = OwnJudgmentSerializer()
    next = QueueItemSerializer(allow_null=True, help_text="The next item, or null when the queue is empty.")
    progress = QueueProgressSerializer()


class SkipResultSerializer(serializers.Serializer):
    assignment_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=AssignmentStatus.choices)
    next = QueueItemSerializer(allow_null=True, help_text="The next item, or null when the queue is empty.")
    progress = QueueProgressSerializer()


class GoneSerializer(serializers.Serializer):
    detail = serializers.CharField()
    next = QueueItemSerializer(allow_null=True, help_text="The next item, or null when the queue is empty.")
    progress = QueueProgressSerializer()


# --- progress --------------------------------------------------------------------------------


class AnnotatorProgressSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["annotator"])
    done = serializers.IntegerField()
    skipped = serializers.IntegerField()
    remaining = serializers.IntegerField()


class PoolProgressSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    target_share = serializers.FloatField(help_text="The pool's target share, normalized over the project's pools.")
    judgments = serializers.IntegerField(help_text="Judgments on regular comparisons by this pool.")
    share = serializers.FloatField(help_text="This pool's share of the regular judgments so far.")


class ProjectProgressSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["project"])
    overlap = serializers.IntegerField()
    comparisons = serializers.IntegerField(help_text="Regular (non-gold) comparisons.")
    gold_comparisons = serializers.IntegerField()
    complete = serializers.IntegerField(help_text="Regular comparisons with all their judgments.")
    open = serializers.IntegerField(help_text="Regular comparisons still taking new assignments.")
    judgments = serializers.IntegerField(help_text="All judgments, gold included.")
    gold_judgments = serializers.IntegerField()
    active_assignments = serializers.IntegerField()
    annotators = serializers.IntegerField(help_text="Annotators in the project, excluded ones included.")
    pools = PoolProgressSerializer(many=True)
    unpooled_judgments = serializers.IntegerField(help_text="Regular judgments by annotators without a pool.")


class TokenResultSerializer(serializers.Serializer):
    token = serializers.CharField()


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"})

