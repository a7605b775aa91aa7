"""``manage.py register_model NAME PATH [--parent NAME] [--project ID_OR_NAME] [--replace] [--check-load]``.

Registers a local Hugging Face model folder (or a PEFT adapter folder on a local base) as a
ModelVersion. The folder is validated (config, weights, tokenizer); ``--check-load`` also loads
it with transformers in this process (the web app never does).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.management.commands.import_comparisons import find_project
from training.services.errors import TrainingError
from training.services.registry import register_model
from training.models import ModelVersion


class Command(BaseCommand):
    help = "Register a local model folder as a model version."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("path")
        parser.add_argument("--parent", help="Name of the version it was trained from.")
        parser.add_argument("--project", help="Project id or name it belongs to.")
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--replace", action="store_true", help="Update a version of that name if it exists."
        )
        parser.add_argument(
            "--check-load", action="store_true", help="Also load the weights and tokenizer with transformers."
        )

    def handle(self, *args, **options):
        parent = None
        if options["parent"]:
            parent = ModelVersion.objects.filter(name=options["parent"]).first()
            if parent is None:
                raise CommandError(f"no model version named {options['parent']!r}")
        project = find_project(options["project"]) if options["project"] else None
        if options["check_load"]:
            from training.tiny_model import ModelLoadError, load_model_and_tokenizer

            try:
                model, _ = load_model_and_tokenizer(options["path"])
            except ModelLoadError as exc:
                raise CommandError(str(exc)) from exc
            n = sum(p.numel() for p in model.parameters())
            self.stdout.write(f"Loaded {type(model).__name__} with {n / 1e6:.1f}M parameters.")
        try:
            version = register_model(
                options["name"],
                options["path"],
                parent=parent,
                project=project,
                description=options["description"],
                replace=options["replace"],
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Registered {version.name} -> {version.path}"))
