"""``manage.py import_judgments --project NAME_OR_ID FILE [--source S] [--on-duplicate error|first|last]``.

Imports externally collected votes (e.g. ../shared/data/pandalm_votes.jsonl) as judgments:
creates or reuses the comparisons, one inactive User per annotator id with an annotator
membership, and the judgments. Validation errors are printed and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotate.imports import ON_DUPLICATE, ImportValidationError, import_judgments
from annotate.management.commands.import_comparisons import ProgressBar, find_project, report_errors


class Command(BaseCommand):
    help = "Import externally collected judgments (votes with annotator ids) into a project."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="a .jsonl or .csv file of votes")
        parser.add_argument("--project", required=True, help="project id or name")
        parser.add_argument(
            "--source", default="", help="source recorded on each judgment (default: each line's 'source')"
        )
        parser.add_argument(
            "--round",
            type=int,
            default=None,
            help="round of new comparisons (default: the project's current round)",
        )
        parser.add_argument(
            "--create-project", action="store_true", help="create the project (by name) if it does not exist"
        )
        parser.add_argument("--format", choices=["jsonl", "csv"], default=None)
        parser.add_argument(
            "--on-duplicate",
            choices=ON_DUPLICATE,
            default="error",
            help="two votes by one annotator on one comparison: an error (default), "
            "or keep the first or the last",
        )

    def handle(self, *args, **options):
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        bar = ProgressBar(self.stderr, f"import {path.name}", disable=options["verbosity"] == 0)
        try:
            with transaction.atomic(), path.open("rb") as fh:
                project = find_project(options["project"], create=options["create_project"])
                result = import_judgments(
                    project,
                    fh,
                    filename=path.name,
                    fmt=options["format"],
                    source=options["source"],
                    round=options["round"],
                    on_duplicate=options["on_duplicate"],
                    progress=bar,
                )
        except ImportValidationError as exc:
            raise report_errors(self, path, exc) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        if result.warnings and options["verbosity"] > 0:
            self.stderr.write(f"{len(result.warnings)} values accepted with a change, e.g.:")
            for w in result.warnings[:5]:
                self.stderr.write(f"  {w}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {path.name} into project '{project.name}': {result.lines} lines, "
                f"{result.judgments_created} judgments created, {result.duplicates} duplicates skipped; "
                f"{result.comparisons_created} comparisons created, {result.comparisons_reused} reused; "
                f"{result.annotators_created} annotators and {result.pools_created} pools created; "
                f"{result.reoriented} votes re-oriented (listed B/A against the stored comparison: "
                "label mapped to the stored order)."
            )
        )
        if result.display_unknown:
            self.stdout.write(
                f"{result.display_unknown} judgments have no 'display': "
                "stored with a_on_left=NULL (display order unknown)."
            )
