"""Admin pages of the stored quality reports, annotator quality rows and exports."""

from django.contrib import admin

from . import models


@admin.register(models.QualityReport)
class QualityReportAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "status", "progress", "n_judgments", "created_at", "finished_at")
    list_filter = ("project", "status")


@admin.register(models.AnnotatorQuality)
class AnnotatorQualityAdmin(admin.ModelAdmin):
    list_display = ("annotator", "project", "n_judgments", "gold_accuracy", "position_bias", "weight")
    list_filter = ("project",)


@admin.register(models.Export)
class ExportAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "status", "n_rows", "content_hash", "created_at")
    list_filter = ("project", "status")
    readonly_fields = ("content_hash", "path", "stats")
