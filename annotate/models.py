"""The annotation data model.

A ``Project`` holds prompts, responses and pairwise ``Comparison``s between two responses to
one prompt. Annotators belong to ``Pool``s through a ``Membership`` that also carries their
role. The queue hands out ``Assignment``s (one annotator, one comparison, the display order
shown); a submitted assignment becomes exactly one ``Judgment``. Gold answers live in their
own table (``GoldAnswer``) so that nothing that renders a comparison can leak them.
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q


def content_hash(text: str) -> str:
    """SHA-256 of the text, the key used to de-duplicate prompts and responses."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    RESEARCHER = "researcher", "Researcher"
    ANNOTATOR = "annotator", "Annotator"


class Choice(models.TextChoices):
    """A judgment in terms of the underlying responses, whatever side they were shown on."""

    A = "a", "A is better"
    B = "b", "B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Strength(models.IntegerChoices):
    SLIGHT = 1, "Slightly better"
    CLEAR = 2, "Clearly better"
    MUCH = 3, "Much better"


#: Bounds kept on a project's numbers below their columns' own ranges (which differ between
#: SQLite and PostgreSQL), so that arithmetic on them -- the next round, an assignment's deadline --
#: never overflows a column or a date. The form, the API and the imports check them.
MAX_ROUND = 1_000_000
MAX_ASSIGNMENT_TIMEOUT_S = 7 * 24 * 3600
MAX_OVERLAP = 50


class PairOrder(models.TextChoices):
    """The order the queue serves open comparisons in (gold mixing and pool balance apply to all)."""

    ARRIVAL = "arrival", "Arrival order"
    MARGIN = "margin", "Active: smallest implicit-reward margin under the latest model first"
    INFORMATION = "information", "Active: most expected information for the latest model first"
    DISAGREEMENT = "disagreement", "Active: most disagreement between pools first"


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    instructions = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    overlap = models.PositiveSmallIntegerField(
        default=3, help_text="How many annotators must judge each comparison (k)."
    )
    gold_rate = models.FloatField(default=0.1, help_text="Share of served items that are gold (0-1).")
    allow_ties = models.BooleanField(default=True)
    assignment_timeout_s = models.PositiveIntegerField(
        default=600, help_text="Seconds before an unanswered assignment returns to the queue."
    )
    show_accuracy_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Annotators see their own gold accuracy after this many gold tasks; empty = never.",
    )
    license = models.CharField(max_length=100, blank=True, default="")
    current_round = models.PositiveIntegerField(default=0)
    pair_order = models.CharField(
        max_length=16,
        choices=PairOrder.choices,
        default=PairOrder.ARRIVAL,
        help_text="Which open comparisons are served first.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Pool(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pools")
    name = models.CharField(max_length=100)
    attributes = models.JSONField(default=dict, blank=True, help_text="Free attributes: region, language, expertise…")
    target_share = models.FloatField(default=0.0, help_text="Target share of the judgments (0-1).")

    class Meta:
        ordering = ["project", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="pool_unique_name")]

    def __str__(self) -> str:
        return f"{self.project}: {self.name}"


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.ANNOTATOR)
    pool = models.ForeignKey(Pool, null=True, blank=True, on_delete=models.SET_NULL, related_name="members")
    excluded = models.BooleanField(default=False, help_text="Excluded annotators are not served; judgments are kept.")
    weight_override = models.FloatField(
        null=True, blank=True, help_text="Admin-set weight in [0, 1] replacing the computed one."
    )
    # When the annotator page first showed this annotator the instructions open; later visits
    # show them folded, one click away.
    instructions_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField()
    messages = models.JSONField(null=True, blank=True, help_text="The prompt as chat messages, when it is a chat.")
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_hash")]

    def __str__(self) -> str:
        return self.text[:60]


class Response(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    model_name = models.CharField(max_length=200, blank=True, default="")
    content_hash = models.CharField(max_length=64)
    round = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prompt", "content_hash", "model_name"], name="response_unique_hash")
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Comparison(models.Model):
    """Two responses to one prompt. ``slots_taken`` = judgments + live assignments.

    ``is_open`` is kept equal to ``slots_taken < project.overlap`` by the queue service so that
    serving the next item is a range scan of the partial index of open comparisons, never a
    scan of all comparisons.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="comparisons")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    response_a = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    response_b = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    round = models.PositiveIntegerField(default=0)
    pair_hash = models.CharField(max_length=64, help_text="Order-independent hash of (prompt, response, response).")
    metadata = models.JSONField(default=dict, blank=True)
    source_preference = models.CharField(
        max_length=1,
        blank=True,
        default="",
        help_text="Provenance of imported TRL/HH lines: which response the source preferred. Never shown.",
    )
    is_gold = models.BooleanField(default=False)
    is_open = models.BooleanField(default=True)
    slots_taken = models.PositiveIntegerField(default=0)
    n_judgments = models.PositiveIntegerField(default=0)
    priority = models.FloatField(
        default=0.0,
        db_default=0.0,  # rows written by raw SQL (bulk loaders) get it too
        help_text="Served before lower priorities when the project's pair order is active; written by the "
        "active-selection task, never shown.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "round", "pair_hash"], name="comparison_unique_pair")
        ]
        indexes = [
            # The queue reads open comparisons in (priority DESC, id) order; a partial index
            # holds only those, so claims and counts stay cheap however many comparisons are
            # already full, and the planner cannot prefer the primary key while statistics lag.
            models.Index(
                fields=["project", "is_gold", "-priority", "id"], condition=Q(is_open=True),
                name="comparison_open_prio_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk}"


class GoldAnswer(models.Model):
    """The known answer of a calibration comparison. Never rendered to annotators."""

    comparison = models.OneToOneField(Comparison, on_delete=models.CASCADE, related_name="gold")
    answer = models.CharField(max_length=8, choices=Choice.choices)

    def __str__(self) -> str:
        return f"Gold {self.comparison_id}: {self.answer}"


class AssignmentStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped"
    EXPIRED = "expired", "Expired"


class Assignment(models.Model):
    # No index of their own on project and annotator: the composite indexes below begin with
    # them (and the unique constraint with the annotator), and every claim and submit writes
    # the assignment's index entries.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments", db_index=False)
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    pool = models.ForeignKey(Pool, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    a_on_left = models.BooleanField(help_text="Whether response A was displayed on the left.")
    status = models.CharField(max_length=10, choices=AssignmentStatus.choices, default=AssignmentStatus.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["annotator", "comparison"], name="assignment_unique"),
        ]
        indexes = [
            models.Index(fields=["project", "status", "expires_at"], name="assignment_expiry_idx"),
            models.Index(fields=["annotator", "project", "status"], name="assignment_annotator_idx"),
        ]

    def __str__(self) -> str:
        return f"Assignment {self.pk} ({self.status})"


class Judgment(models.Model):
    # Project and annotator: covered by judgment_project_time_idx and judgment_once_per_annotator
    # (each begins with its column), so no index of their own for every judgment to write.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judgments", db_index=False)
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments", db_index=False
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="judgment"
    )
    pool = models.ForeignKey(Pool, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Always set for judgments made in the app (the assignment's randomized order); NULL for
    # imported votes whose display order was not recorded (annotate.imports.import_judgments).
    a_on_left = models.BooleanField(
        null=True,
        blank=True,
        help_text="Whether response A was displayed on the left; empty (NULL) when the display order is unknown.",
    )
    choice = models.CharField(max_length=8, choices=Choice.choices)
    strength = models.PositiveSmallIntegerField(choices=Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True, default="")
    seconds = models.FloatField(null=True, blank=True, help_text="Time spent on the item.")
    source = models.CharField(max_length=100, blank=True, default="", help_text="'' for the app; else the import.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the annotator changed this judgment (annotate.revisions); the replaced versions
    # are kept in JudgmentRevision. Statistics and exports read this row: the latest version.
    revised_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["annotator", "comparison"], name="judgment_once_per_annotator"),
            # A judgment made in the app (through an assignment) always knows its display order.
            models.CheckConstraint(
                condition=models.Q(a_on_left__isnull=False) | models.Q(assignment__isnull=True),
                name="judgment_app_order_known",
            ),
        ]
        indexes = [models.Index(fields=["project", "created_at"], name="judgment_project_time_idx")]

    def __str__(self) -> str:
        return f"Judgment {self.pk}: {self.choice}"


class JudgmentRevision(models.Model):
    """A judgment as it was before its annotator changed it: the original is never lost.

    The ``Judgment`` row always holds the current version (one per annotator and comparison);
    each change first copies the replaced values here (``annotate.revisions.revise``)."""

    judgment = models.ForeignKey(Judgment, on_delete=models.CASCADE, related_name="revisions")
    choice = models.CharField(max_length=8, choices=Choice.choices)
    strength = models.PositiveSmallIntegerField(choices=Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True, default="")
    judged_at = models.DateTimeField(help_text="When this version was made.")
    replaced_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["judgment", "judged_at"]

    def __str__(self) -> str:
        return f"Judgment {self.judgment_id} was {self.choice} until {self.replaced_at:%Y-%m-%d %H:%M}"
