"""Stored results of the statistics, and calibrated exports.

The numbers are computed by the pure modules (aggregation, agreement, bias, ranking) from
the judgments; these rows keep the latest results so that pages, the queue, exports and
training read them without recomputing. Quality reports and exports are background jobs: their
owner, heartbeat and recovery come from :mod:`prefloop.jobs` (``OwnedJob``).
"""
from __future__ import annotations

from django.conf import settings
from django.db import models

from annotate.models import Project
from prefloop.jobs import JobStatus, OwnedJob

__all__ = ["JobStatus", "QualityReport", "AnnotatorQuality", "ExportFormat", "Export"]


class QualityReport(OwnedJob):
    """One computation of a project's annotator quality and agreement statistics."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quality_reports")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    message = models.TextField(blank=True, default="")
    n_judgments = models.PositiveIntegerField(default=0)
    data = models.JSONField(default=dict, blank=True, help_text="Agreement, pool matrix, time series, settings.")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"Quality report {self.pk} ({self.status})"


class AnnotatorQuality(models.Model):
    """The latest reliability and bias estimates of one annotator in one project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="annotator_quality")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    n_judgments = models.PositiveIntegerField(default=0)
    n_gold = models.PositiveIntegerField(default=0)
    gold_correct = models.PositiveIntegerField(default=0)
    gold_accuracy = models.FloatField(null=True, blank=True)
    gold_accuracy_low = models.FloatField(null=True, blank=True)
    gold_accuracy_high = models.FloatField(null=True, blank=True)
    estimated_accuracy = models.FloatField(null=True, blank=True, help_text="Dawid–Skene estimate.")
    position_bias = models.FloatField(null=True, blank=True)
    position_bias_se = models.FloatField(null=True, blank=True)
    length_bias = models.FloatField(null=True, blank=True)
    length_bias_se = models.FloatField(null=True, blank=True)
    tie_rate = models.FloatField(null=True, blank=True)
    both_bad_rate = models.FloatField(null=True, blank=True)
    median_seconds = models.FloatField(null=True, blank=True)
    flags = models.JSONField(default=list, blank=True)
    weight = models.FloatField(default=1.0, help_text="Computed weight in [0, 1] (before any admin override).")
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "annotator"], name="annotator_quality_unique")
        ]

    def __str__(self) -> str:
        return f"{self.annotator} in {self.project}: weight {self.weight:.2f}"


class ExportFormat(models.TextChoices):
    JSONL = "jsonl", "JSONL (TRL preference format)"
    PARQUET = "parquet", "Parquet"
    HF = "hf", "Hugging Face datasets folder"
    CSV = "csv", "CSV"
    JUDGMENTS = "judgments", "Judgment-level JSONL"


class Export(OwnedJob):
    """A calibrated preference dataset, built once by a Celery task and immutable after."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="exports")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=200, blank=True, default="")
    params = models.JSONField(default=dict, blank=True, help_text="Filters, aggregation method, split, formats.")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True, default="")
    path = models.CharField(max_length=500, blank=True, default="", help_text="Folder holding the built files.")
    content_hash = models.CharField(max_length=64, blank=True, default="")
    n_rows = models.PositiveIntegerField(default=0)
    stats = models.JSONField(default=dict, blank=True)
    step = models.CharField(max_length=200, blank=True, default="", help_text="What the build is doing now.")
    salt = models.CharField(
        max_length=64,
        blank=True,
        default="",
        editable=False,
        help_text="Secret key of this export's annotator pseudonyms. Never written to a file or an API.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Export {self.pk} of {self.project} ({self.status})"
