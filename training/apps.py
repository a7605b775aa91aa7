"""The training app: models, runs, the trainer, the GPU worker's side, sampling the next round."""

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self) -> None:
        # Register the Celery tasks in every process (web too): services send them by name.
        from . import tasks as _tasks  # noqa: F401

        # Active pair selection: a new pair order, new votes and new comparisons queue the
        # priority computation.
        from django.db.models.signals import post_save

        from annotate.signals import comparisons_imported, pair_order_changed
        from evaluation.models import QualityReport

        from .active.services import on_comparisons_imported, on_pair_order_changed, on_quality_report_saved

        pair_order_changed.connect(on_pair_order_changed, dispatch_uid="training.active.pair_order_changed")
        comparisons_imported.connect(on_comparisons_imported, dispatch_uid="training.active.imported")
        post_save.connect(on_quality_report_saved, sender=QualityReport, dispatch_uid="training.active.quality")
