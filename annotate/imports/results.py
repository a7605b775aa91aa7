"""What an import reports: its errors (``LineError``, ``ImportValidationError`` and the
collector that caps them at ``MAX_ERRORS``) and its results (``ImportResult``,
``JudgmentImportResult``). No database access."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

#: ``progress(done, total)``: called after each batch of rows written.
Progress = Callable[[int, int], None]

#: Validation stops collecting after this many errors.
MAX_ERRORS = 100
#: ``ImportValidationError``'s message lists this many errors; ``.errors`` holds them all.
SHOWN_ERRORS = 20


@dataclass(frozen=True)
class LineError:
    """One problem in an import file. ``line`` is 1-based; 0 means the file as a whole."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return self.message
        if self.field:
            return f"line {self.line}, field '{self.field}': {self.message}"
        return f"line {self.line}: {self.message}"


class ImportValidationError(Exception):
    """The file was rejected; nothing was written. ``errors`` lists what is wrong."""

    def __init__(self, errors: list[LineError], *, truncated: bool = False, hints: list[str] | None = None):
        self.errors = list(errors)
        self.truncated = truncated
        self.hints = list(hints or [])
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.errors)
        count = f"{n}{'+' if self.truncated else ''} error{'s' if n != 1 else ''}"
        head = f"{count} in the file; nothing was imported."
        lines = [head] + [str(e) for e in self.errors[:SHOWN_ERRORS]]
        hidden = n - SHOWN_ERRORS
        if hidden > 0:
            lines.append(f"... and {hidden} more")
        if self.truncated:
            lines.append(f"(validation stopped after {MAX_ERRORS} errors)")
        lines.extend(self.hints)
        return "\n".join(lines)

    def __reduce__(self):  # picklable (a Celery task may raise it)
        return (_rebuild_validation_error, (self.errors, self.truncated, self.hints))


def _rebuild_validation_error(errors, truncated, hints) -> ImportValidationError:
    return ImportValidationError(errors, truncated=truncated, hints=hints)


@dataclass
class ImportResult:
    """What :func:`import_comparisons` did. ``created + duplicates == lines``."""

    lines: int
    created: int
    duplicates: int
    gold: int
    prompts_created: int
    responses_created: int
    #: With ``votes_source``: the source, the votes created (one per new (source, comparison))
    #: and how many of them were listed in the other order than their stored comparison.
    votes_source: str = ""
    votes_created: int = 0
    votes_reoriented: int = 0
    #: Existing comparisons that gold lines flagged as gold (or gave a new answer), instead of
    #: importing a second, gold copy of the same pair.
    gold_marked: int = 0
    #: Regular lines whose prompt and response texts are a gold comparison's (stored, or a gold line
    #: of the file) under other model names or in another round: counted in ``duplicates``, joined to it
    #: instead of imported as a regular copy of a gold pair (``annotate.gold.gold_twins``).
    gold_twin_lines: list[int] = field(default_factory=list)


@dataclass
class JudgmentImportResult:
    """What :func:`import_judgments` did. ``judgments_created + duplicates == lines``.

    ``duplicates`` counts lines whose (annotator, comparison) judgment already existed in the
    database (skipped, so a re-import is harmless) or that ``on_duplicate`` dropped in the file.
    ``warnings`` lists values accepted with a change (empty or non-string responses).
    ``reoriented`` counts the judgments created whose vote listed the two responses in the
    other order than the stored comparison: their label (a/b) and display order were mapped
    to the stored order.
    """

    lines: int
    judgments_created: int
    duplicates: int
    comparisons_created: int
    comparisons_reused: int
    annotators_created: int
    memberships_created: int
    pools_created: int
    prompts_created: int
    responses_created: int
    display_unknown: int
    reoriented: int = 0
    warnings: list[LineError] = field(default_factory=list)


class Errors:
    """Collects errors up to MAX_ERRORS; raises once the cap is reached."""

    def __init__(self) -> None:
        self.items: list[LineError] = []
        self.hints: dict[str, None] = {}

    def add(self, line: int, field_name: str, message: str) -> None:
        self.items.append(LineError(line, field_name, message))
        if len(self.items) >= MAX_ERRORS:
            raise ImportValidationError(self.items, truncated=True, hints=list(self.hints))

    def hint(self, text: str) -> None:
        self.hints[text] = None

    def raise_if_any(self) -> None:
        if self.items:
            raise ImportValidationError(self.items, hints=list(self.hints))
