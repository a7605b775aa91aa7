from django.contrib import admin

from . import models


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "round", "parent", "is_adapter", "training_run", "created_at")
    list_filter = ("project", "is_adapter")
    search_fields = ("name", "path", "description")
    raw_id_fields = ("parent", "training_run")


@admin.register(models.TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "recipe", "base_model", "status", "step", "total_steps", "created_at")
    list_filter = ("project", "status", "recipe")
    readonly_fields = ("celery_task_id", "worker", "heartbeat_at", "attempts", "out_dir", "summary", "logs")
    raw_id_fields = ("export", "base_model", "output_model")


@admin.register(models.TrainingMetric)
class TrainingMetricAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "created_at")
    list_filter = ("run",)


@admin.register(models.GenerationSample)
class GenerationSampleAdmin(admin.ModelAdmin):
    list_display = ("id", "model_version", "run", "status", "created_at")
    list_filter = ("status",)


@admin.register(models.SamplingJob)
class SamplingJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "project",
        "model_version",
        "compare_to",
        "round",
        "status",
        "n_created",
        "created_at",
    )
    list_filter = ("project", "status")
