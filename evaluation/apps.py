from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "evaluation"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from annotate.models import Judgment

        from annotate.signals import judgments_imported

        from .signals import judgment_saved, judgments_imported as on_judgments_imported

        post_save.connect(judgment_saved, sender=Judgment, dispatch_uid="evaluation.judgment_saved")
        judgments_imported.connect(on_judgments_imported, dispatch_uid="evaluation.judgments_imported")
