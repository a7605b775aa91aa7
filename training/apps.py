"""The training app: models, runs, the trainer, the GPU worker's side, sampling the next round."""

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self) -> None:
        # Register the Celery tasks in every process (web too): services send them by name.
        from . import tasks as _tasks  # noqa: F401
