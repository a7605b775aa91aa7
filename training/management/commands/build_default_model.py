"""``manage.py build_default_model [--if-missing] [--out DIR] [--name tiny-default]``.

Builds the project's own default model with no network (``training.tiny_model``): a byte-level
BPE tokenizer trained on every prompt and response in the database plus a small built-in
corpus, and a small random Llama, saved with ``save_pretrained``; then registers the folder as
the ModelVersion ``tiny-default``. ``make demo`` calls it with ``--if-missing``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Prompt, Response
from training.services.errors import ModelFolderError, TrainingError
from training.services.registry import register_model, validate_model_folder
from training.models import ModelVersion

#: At most this many texts train the tokenizer (prompts first, then responses).
MAX_TEXTS = 200_000


def project_texts(limit: int = MAX_TEXTS):
    prompts = Prompt.objects.order_by("pk").values_list("text", flat=True).iterator(chunk_size=2000)
    responses = Response.objects.order_by("pk").values_list("text", flat=True).iterator(chunk_size=2000)
    return itertools.islice(itertools.chain(prompts, responses), limit)


class Command(BaseCommand):
    help = "Build the tiny default model (tokenizer trained on the project's texts) and register it."

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="Do nothing when the model version exists and its folder is valid.",
        )
        parser.add_argument("--out", help="Folder to write (default: PREFLOOP_MODELS_DIR/<name>).")
        parser.add_argument(
            "--name", default="tiny-default", help="ModelVersion name (default tiny-default)."
        )
        parser.add_argument("--vocab-size", type=int, default=4096)
        parser.add_argument("--hidden", type=int, default=256)
        parser.add_argument("--layers", type=int, default=4)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options):
        name = options["name"]
        existing = ModelVersion.objects.filter(name=name).first()
        if options["if_missing"] and existing is not None:
            try:
                validate_model_folder(existing.path)
            except ModelFolderError as exc:
                self.stdout.write(f"{name} is registered but its folder is unusable ({exc}); rebuilding.")
            else:
                self.stdout.write(f"{name} already exists at {existing.path}; nothing to do.")
                return
        out = Path(options["out"]) if options["out"] else Path(settings.PREFLOOP_MODELS_DIR) / name
        out = out.expanduser().resolve()
        from training.tiny_model import build_default_model  # loads torch: only in this command

        t0 = time.time()
        texts = list(project_texts())
        self.stdout.write(
            f"Training a tokenizer on {len(texts)} texts from the database + the built-in corpus…"
        )
        try:
            build_default_model(
                out,
                texts,
                vocab_size=options["vocab_size"],
                hidden=options["hidden"],
                layers=options["layers"],
                seed=options["seed"],
            )
        except (OSError, ValueError) as exc:
            raise CommandError(f"could not build the model in {out}: {exc}") from exc
        try:
            version = register_model(
                name,
                out,
                description="prefloop's tiny default model (tokenizer trained on the project's texts)",
                replace=True,
                metrics={"texts": len(texts)},
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Built {version.name} in {out} ({time.time() - t0:.1f}s) and registered it.")
        )
