"""The evaluation app: three concerns in three packages, one set of models.

``stats/`` is the pure math, ``quality/`` the annotator-quality dashboard and its API,
``export/`` the calibrated exports; ``selectors.py`` is the judgment loader they share.
"""

from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "evaluation"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from annotate.models import Judgment
        from annotate.signals import gold_changed, judgments_imported

        # Register the Celery tasks in every process (web too): services enqueue them by name.
        from .export import tasks as _export_tasks  # noqa: F401
        from .quality import tasks as _quality_tasks  # noqa: F401
        from .quality.signals import gold_changed as on_gold_changed
        from .quality.signals import judgment_saved
        from .quality.signals import judgments_imported as on_judgments_imported

        post_save.connect(judgment_saved, sender=Judgment, dispatch_uid="evaluation.judgment_saved")
        judgments_imported.connect(on_judgments_imported, dispatch_uid="evaluation.judgments_imported")
        gold_changed.connect(on_gold_changed, dispatch_uid="evaluation.gold_changed")
