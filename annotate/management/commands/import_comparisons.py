"""``manage.py import_comparisons --project NAME_OR_ID FILE [--round N] [--create-project]
[--votes-source NAME]``.

Validates the whole file first; on errors prints them (line and field) and exits non-zero
without writing anything (a project that ``--create-project`` would have created is not left
behind either). Otherwise imports in one transaction with a progress bar. ``--votes-source``
also imports a chosen/rejected file's preferences as the votes of that source
(``annotate.imports.sources``), ready for the quality statistics and a calibrated export.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from annotate.imports import ImportValidationError, import_comparisons
from annotate.models import Project


def find_project(value: str, *, create: bool = False) -> Project:
    """The project with this id or name; created by name when ``create`` and missing (call it
    inside the import's ``transaction.atomic()`` so that a rejected file leaves no project)."""
    value = value.strip()
    project = None
    if value.isdigit():
        project = Project.objects.filter(pk=int(value)).first()
    if project is None:
        project = Project.objects.filter(name=value).first()
    if project is None:
        if not create:
            raise CommandError(f"No project with id or name {value!r} (add --create-project to create it).")
        project = Project.objects.create(name=value)
    return project


class ProgressBar:
    """A ``progress(done, total)`` callback drawing a tqdm bar on the command's stderr."""

    def __init__(self, stream, desc: str, disable: bool = False):
        self.stream, self.desc, self.disable = stream, desc, disable
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=self.desc,
                unit="rows",
                file=self.stream,
                disable=self.disable,
                dynamic_ncols=True,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_errors(command: BaseCommand, path: Path, exc: ImportValidationError) -> CommandError:
    for error in exc.errors:
        command.stderr.write(str(error))
    for hint in exc.hints:
        command.stderr.write(hint)
    more = f" (validation stopped after the first {len(exc.errors)})" if exc.truncated else ""
    n = len(exc.errors)
    return CommandError(
        f"{path.name} was not imported: {n} error{'s' if n != 1 else ''}{more}; nothing was written."
    )


class Command(BaseCommand):
    help = "Import comparisons (JSONL or CSV; a/b or TRL chosen/rejected lines) into a project."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="a .jsonl or .csv file")
        parser.add_argument("--project", required=True, help="project id or name")
        parser.add_argument(
            "--round",
            type=int,
            default=None,
            help="round of the comparisons (default: the project's current round)",
        )
        parser.add_argument(
            "--create-project", action="store_true", help="create the project (by name) if it does not exist"
        )
        parser.add_argument(
            "--format", choices=["jsonl", "csv"], default=None, help="default: from the file name or content"
        )
        parser.add_argument(
            "--allow-empty-responses",
            action="store_true",
            help="accept empty or whitespace-only responses (the HH-RLHF file has a few); "
            "prompts must never be empty",
        )
        parser.add_argument(
            "--votes-source",
            default="",
            metavar="NAME",
            help="also import each chosen/rejected line's preference as a vote of the source NAME "
            "(a pseudo-annotator 'source:NAME' in its own pool NAME), so the file can be exported and "
            "trained on",
        )

    def handle(self, *args, **options):
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        bar = ProgressBar(self.stderr, f"import {path.name}", disable=options["verbosity"] == 0)
        try:
            with transaction.atomic(), path.open("rb") as fh:
                project = find_project(options["project"], create=options["create_project"])
                result = import_comparisons(
                    project,
                    fh,
                    filename=path.name,
                    fmt=options["format"],
                    round=options["round"],
                    allow_empty_responses=options["allow_empty_responses"],
                    votes_source=options["votes_source"],
                    progress=bar,
                )
        except ImportValidationError as exc:
            raise report_errors(self, path, exc) from None
        finally:
            bar.close()
        round_ = project.current_round if options["round"] is None else options["round"]
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {path.name} into project '{project.name}' (round {round_}): {result.lines} lines, "
                f"{result.created} comparisons created ({result.gold} gold), "
                + (f"{result.gold_marked} existing comparisons made gold, " if result.gold_marked else "")
                + f"{result.duplicates} duplicates skipped, "
                f"{result.prompts_created} prompts and {result.responses_created} responses created."
            )
        )
        if result.gold_twin_lines:
            lines = ", ".join(map(str, result.gold_twin_lines[:20])) + (" …" if len(result.gold_twin_lines) > 20 else "")
            self.stdout.write(
                f"Line{'s' if len(result.gold_twin_lines) > 1 else ''} {lines}: the pair (prompt and response texts) "
                f"of a gold comparison, under other model names or in another round: counted as duplicates, "
                f"joined to it (a gold pair is never copied as a regular one)."
            )
        if result.votes_source:
            self.stdout.write(
                f"Votes of source '{result.votes_source}' (annotator 'source:{result.votes_source}', "
                f"pool '{result.votes_source}'): {result.votes_created} created, "
                f"{result.votes_reoriented} re-oriented to their comparison's stored order."
            )
