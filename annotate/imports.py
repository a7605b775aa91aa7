"""Import comparisons and externally collected judgments from JSONL or CSV files.

The one service behind the import page, the REST API and the ``import_comparisons`` /
``import_judgments`` management commands::

    import_comparisons(project, fileobj, *, filename="", fmt=None, round=None,
                       allow_empty_responses=False, progress=None) -> ImportResult
    import_judgments(project, fileobj, *, filename="", fmt=None, source="", round=None,
                     on_duplicate="error", allow_empty_responses=True, progress=None) -> JudgmentImportResult

Guarantees (what a user notices):

* **Validated whole, written whole.** Every line is checked before anything is written; a file
  with errors raises :class:`ImportValidationError` carrying up to :data:`MAX_ERRORS`
  :class:`LineError` s (line, field, message — ``str()`` gives
  ``line 12, field 'response_b': must be a non-empty string``) and the database is left
  unchanged. The writes run in one ``transaction.atomic()``.
* **De-duplicated by content.** Prompts by (project, sha256 of the text — of the canonical JSON
  for a chat prompt), responses by (prompt, sha256 of the text, model name), comparisons by
  (project, round, :func:`pair_hash`) — order-independent, so ``a, b`` and ``b, a`` are one
  comparison. Duplicates within the file and against the database are counted and skipped:
  importing the same file twice creates nothing the second time. The first occurrence wins.
* **Fast.** Lines are parsed and hashed in Python, existing rows are looked up with chunked
  ``__in`` queries, new rows are written with one multi-row INSERT per batch of
  :data:`BATCH_SIZE` (see :func:`_insert`); ``progress(done, total)`` is called after each
  batch, counting rows written (prompts, responses, comparisons, gold answers, judgments).

Line numbers are 1-based physical lines of the file. In a CSV file the header is line 1 and a
record is numbered by the line it starts on (a quoted field may span several lines).

Comparison lines (JSONL, one object per line; CSV with a header naming the same columns)::

    {"prompt": ..., "response_a": ..., "response_b": ...,
     "model_a": "...", "model_b": "...", "metadata": {...}, "gold": "a"|"b"|"tie"}
    {"prompt": ..., "chosen": ..., "rejected": ...}            # TRL / HH-RLHF style

* ``prompt`` is a string or a list of chat messages ``[{"role", "content"}, ...]`` (TRL's
  conversational format): the list is stored in ``Prompt.messages`` and ``Prompt.text`` is
  the flattened ``"role: content"`` turns separated by blank lines. A ``chosen``/``rejected``
  value may be a list of messages too; its text is the message contents joined the same way.
  In CSV a prompt is always plain text and ``metadata`` is a JSON string; an empty cell of an
  optional column is an absent value.
* ``chosen``/``rejected`` lines become a comparison whose a/b order is drawn from an RNG seeded
  by the line's content (re-importing gives the same order); which side got the chosen
  response is kept in ``Comparison.source_preference`` ("a" or "b") and never shown. They
  take no ``gold``, ``model_a`` or ``model_b``.
* An empty or whitespace-only response is refused unless ``allow_empty_responses`` (the
  HH-RLHF file has four empty "chosen" answers: saying nothing was the harmless choice). A
  prompt may never be empty.
* Keys other than the ones above are kept in the comparison's ``metadata`` (an explicit
  ``metadata`` object wins on a clash).

Judgment lines (:func:`import_judgments`), e.g. ``../shared/data/pandalm_votes.jsonl``::

    {"source", "item_id", "prompt", "response_a", "response_b", "model_a", "model_b",
     "annotator_id", "label": "a"|"b"|"tie"|"both_bad", "strength": null|"slight"|"clear"|"much",
     "extra": {...}, optional "pool", "seconds", "rationale", "display": "a_left"|"b_left",
     "choice" (an alias of "label", e.g. "both_bad"), "metadata"}

They are validated like comparison lines with three deliberate differences, because they
record what humans already judged: empty responses are accepted by default (PandaLM has 54
items where a model answered nothing), a response that is a JSON boolean or number is taken
as its JSON text (PandaLM has ``true``), and the two responses may have the same text when they
come from different models (Tulu 1 has 40 such votes). Each is reported in
``JudgmentImportResult.warnings``. ``label`` is the choice in terms of the underlying responses
(a/b), whatever side they were shown on. The display order is unknown unless ``display`` says
it: ``Judgment.a_on_left`` is then stored as NULL (``"a_left"`` gives True, ``"b_left"``
False), and ``display_unknown`` counts those rows. The statistics leave unknown-order judgments
out of the position-bias estimate and give them no position term in debiased Dawid–Skene.
``item_id`` and ``source`` go into a new comparison's metadata; ``extra`` is validated but not
stored (Judgment has no field for it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, connections, router, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, JSONField, Q
from django.utils import timezone

from .signals import judgments_imported
from .models import (
    Choice,
    Comparison,
    GoldAnswer,
    Judgment,
    Membership,
    Pool,
    Project,
    Prompt,
    Response,
    Role,
    Strength,
    content_hash,
)

__all__ = [
    "LineError",
    "ImportValidationError",
    "ImportResult",
    "JudgmentImportResult",
    "import_comparisons",
    "import_judgments",
    "pair_hash",
    "prompt_hash",
    "flatten_messages",
    "MAX_ERRORS",
]

Progress = Callable[[int, int], None]

#: Validation stops collecting after this many errors.
MAX_ERRORS = 100
#: ``ImportValidationError``'s message lists this many errors; ``.errors`` holds them all.
SHOWN_ERRORS = 20
#: Rows per INSERT statement (fewer where the database limits bound parameters).
BATCH_SIZE = 2000
#: Values per ``__in`` lookup: below SQLite's 999 bound parameters.
LOOKUP_CHUNK = 900

GOLD_VALUES = ("a", "b", "tie")
LABEL_VALUES = (Choice.A.value, Choice.B.value, Choice.TIE.value, Choice.BOTH_BAD.value)
STRENGTH_NAMES = {"slight": Strength.SLIGHT.value, "clear": Strength.CLEAR.value, "much": Strength.MUCH.value}
DISPLAY_VALUES = {"a_left": True, "b_left": False}
ON_DUPLICATE = ("error", "first", "last")

_MODEL_NAME_MAX = Response._meta.get_field("model_name").max_length
_POOL_NAME_MAX = Pool._meta.get_field("name").max_length
_SOURCE_MAX = Judgment._meta.get_field("source").max_length

_COMPARISON_KEYS = {
    "prompt",
    "response_a",
    "response_b",
    "chosen",
    "rejected",
    "model_a",
    "model_b",
    "metadata",
    "gold",
}
# CSV cells that stay strings even when empty (so an empty cell reads "must be a non-empty string").
_CSV_TEXT_COLUMNS = {"prompt", "response_a", "response_b", "chosen", "rejected"}
_CSV_JSON_COLUMNS = {"metadata", "extra"}


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


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


@dataclass
class JudgmentImportResult:
    """What :func:`import_judgments` did. ``judgments_created + duplicates == lines``.

    ``duplicates`` counts lines whose (annotator, comparison) judgment already existed in the
    database (skipped, so a re-import is harmless) or that ``on_duplicate`` dropped in the file.
    ``warnings`` lists values accepted with a change (empty or non-string responses).
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
    warnings: list[LineError] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def canonical_messages(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def flatten_messages(messages: list[dict]) -> str:
    """A chat as plain text: ``"role: content"`` turns separated by blank lines."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_hash(text: str, messages: list[dict] | None = None) -> str:
    """The de-duplication key of a prompt: of its text, or of the canonical JSON of its chat."""
    return content_hash(canonical_messages(messages)) if messages is not None else content_hash(text)


def pair_hash(prompt_key: str, hash_a: str, model_a: str, hash_b: str, model_b: str) -> str:
    """Order-independent key of a comparison: prompt hash + both responses (text hash, model)."""
    sides = sorted((f"{hash_a}\t{model_a}", f"{hash_b}\t{model_b}"))
    return hashlib.sha256(f"{prompt_key}\n{sides[0]}\n{sides[1]}".encode("utf-8")).hexdigest()


def _chosen_goes_to_a(prompt_key: str, chosen_hash: str, rejected_hash: str) -> bool:
    """The seeded-by-content coin that places a TRL line's chosen response on side a or b."""
    seed = hashlib.sha256(f"trl-order\n{prompt_key}\n{chosen_hash}\n{rejected_hash}".encode("utf-8")).digest()
    return random.Random(seed).random() < 0.5


# --------------------------------------------------------------------------------------------
# Reading the file into (line number, record) pairs
# --------------------------------------------------------------------------------------------


class _Errors:
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


def _read_text(fileobj) -> str:
    data = fileobj.read()
    if isinstance(data, str):
        return data[1:] if data.startswith("\ufeff") else data
    data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise ImportValidationError(
            [LineError(line, "", f"is not valid UTF-8 (byte 0x{bad}); save the file as UTF-8")]
        ) from None


def _guess_format(filename: str, text: str) -> str:
    ext = os.path.splitext(filename or "")[1].lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    return "jsonl" if text.lstrip()[:1] in ("{", "[") else "csv"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _loads(text: str):
    """json.loads without NaN/Infinity (PostgreSQL's jsonb refuses them)."""
    return json.loads(text, parse_constant=_reject_constant)


def _unstorable(value) -> str | None:
    """Why a parsed value cannot be stored as text in every database, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain the NUL character (\\u0000)"
        if _SURROGATE.search(value):
            return "must not contain unpaired UTF-16 surrogates (e.g. \\ud800)"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _unstorable(k) or _unstorable(v)
            if problem:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = _unstorable(v)
            if problem:
                return problem
    return None


def _check_storable(record: dict, line: int, errors: _Errors) -> bool:
    ok = True
    for key, value in record.items():
        problem = _unstorable(value) or _unstorable(key)
        if problem:
            errors.add(line, key if not _unstorable(key) else "", problem)
            ok = False
    return ok


def _check_line_sizes(text: str, errors: _Errors) -> None:
    limit = settings.PREFLOOP_MAX_IMPORT_LINE_BYTES
    if len(text) <= limit // 4:  # fast path: no line can exceed the limit
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) * 4 > limit:
            size = len(line.encode("utf-8"))
            if size > limit:
                errors.add(number, "", f"is {size} bytes, over the limit of {limit} bytes")


def _iter_jsonl(text: str, errors: _Errors) -> Iterator[tuple[int, dict]]:
    limit = settings.PREFLOOP_MAX_IMPORT_LINE_BYTES
    decode = _loads
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw or raw.isspace():
            continue
        if len(raw) * 4 > limit and len(raw.encode("utf-8")) > limit:
            continue  # reported by _check_line_sizes
        try:
            value = decode(raw)
        except json.JSONDecodeError as exc:
            errors.add(number, "", f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:  # NaN / Infinity
            errors.add(number, "", f"invalid JSON: {exc}")
            continue
        except RecursionError:
            errors.add(number, "", "invalid JSON: nested too deeply")
            continue
        if not isinstance(value, dict):
            hint = (
                "; the file must have one JSON object per line (JSON Lines)"
                if isinstance(value, list)
                else ""
            )
            errors.add(number, "", f"must be a JSON object, not {_type_name(value)}{hint}")
            continue
        yield number, value


def _iter_csv(text: str, errors: _Errors) -> Iterator[tuple[int, dict]]:
    limit = settings.PREFLOOP_MAX_IMPORT_LINE_BYTES
    if csv.field_size_limit() < limit + 1:
        csv.field_size_limit(limit + 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        errors.add(1, "", f"invalid CSV: {exc}")
        return
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for name in header:
        if not name:
            errors.add(1, "", "the header has an empty column name")
            return
        if name in seen:
            errors.add(1, "", f"the header names the column '{name}' twice")
            return
        seen.add(name)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.add(start, "", f"invalid CSV: {exc}")
            return
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            errors.add(start, "", f"has {len(row)} fields but the header has {len(header)}")
            continue
        record: dict[str, Any] = {}
        for name, cell in zip(header, row):
            if name in _CSV_TEXT_COLUMNS:
                record[name] = cell
            elif cell.strip() == "":
                continue  # an empty optional cell is an absent value
            elif name in _CSV_JSON_COLUMNS:
                try:
                    record[name] = _loads(cell)
                except json.JSONDecodeError as exc:
                    errors.add(
                        start, name, f"must be a JSON object: invalid JSON: {exc.msg} (column {exc.colno})"
                    )
                    record[name] = {}
                except ValueError as exc:
                    errors.add(start, name, f"must be a JSON object: invalid JSON: {exc}")
                    record[name] = {}
            elif name == "seconds":
                try:
                    record[name] = float(cell)
                except ValueError:
                    record[name] = cell  # reported by the validator
            elif name == "strength" and cell.strip().isdigit():
                record[name] = int(cell)
            else:
                record[name] = cell
        yield start, record


def _records(
    fileobj, filename: str, fmt: str | None, errors: _Errors
) -> tuple[str, Iterator[tuple[int, dict]]]:
    text = _read_text(fileobj)
    if not text.strip():
        raise ImportValidationError([LineError(0, "", "the file is empty")])
    fmt = (fmt or _guess_format(filename, text)).lower()
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown import format {fmt!r}: expected 'jsonl' or 'csv'")
    _check_line_sizes(text, errors)
    return fmt, (_iter_jsonl(text, errors) if fmt == "jsonl" else _iter_csv(text, errors))


# --------------------------------------------------------------------------------------------
# Validating one record
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pair:
    """A validated comparison: two responses to one prompt, with its keys."""

    line: int
    prompt_text: str
    prompt_messages: list | None
    prompt_key: str
    text_a: str
    model_a: str
    hash_a: str
    text_b: str
    model_b: str
    hash_b: str
    key: str  # pair_hash
    metadata: dict
    gold: str = ""
    source_preference: str = ""


def _messages(value: list, line: int, name: str, errors: _Errors) -> list[dict] | None:
    ok = True
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            errors.add(line, f"{name}[{i}]", f"must be a chat message object, not {_type_name(m)}")
            ok = False
            continue
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role.strip():
            errors.add(line, f"{name}[{i}].role", "must be a non-empty string")
            ok = False
        if not isinstance(content, str):
            errors.add(
                line, f"{name}[{i}].content", "must be a string" if content is not None else "is missing"
            )
            ok = False
    if not ok:
        return None
    if not value or not any(m["content"].strip() for m in value):
        errors.add(line, name, "must be a non-empty string or a non-empty list of chat messages")
        return None
    return value


def _prompt(record: dict, line: int, errors: _Errors) -> tuple[str, list | None] | None:
    if "prompt" not in record:
        errors.add(line, "prompt", "is missing")
        return None
    value = record["prompt"]
    if isinstance(value, str):
        if not value.strip():
            errors.add(line, "prompt", "must be a non-empty string")
            return None
        return value, None
    if isinstance(value, list):
        messages = _messages(value, line, "prompt", errors)
        if messages is None:
            return None
        return flatten_messages(messages), messages
    errors.add(line, "prompt", f"must be a string or a list of chat messages, not {_type_name(value)}")
    return None


EMPTY_RESPONSE_HINT = (
    "Empty responses are refused unless allowed: import with allow_empty_responses=True "
    "(--allow-empty-responses) if the file means them."
)


def _response_text(
    record: dict,
    name: str,
    line: int,
    errors: _Errors,
    *,
    allow_empty: bool = False,
    lenient: bool = False,
    warnings: list[LineError] | None = None,
) -> str | None:
    if name not in record:
        errors.add(line, name, "is missing")
        return None
    value = record[name]
    if isinstance(value, list):
        messages = _messages(value, line, name, errors)
        if messages is None:
            return None
        return messages[0]["content"] if len(messages) == 1 else flatten_messages(messages)
    if (
        lenient
        and isinstance(value, (bool, int, float))
        and not (isinstance(value, float) and not math.isfinite(value))
    ):
        text = json.dumps(value)
        if warnings is not None:
            warnings.append(LineError(line, name, f"{_type_name(value)} taken as the text {text!r}"))
        return text
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {_type_name(value)}")
        return None
    if not value.strip():
        if allow_empty:
            if warnings is not None:
                warnings.append(LineError(line, name, "empty response imported as it is"))
            return value
        errors.hint(EMPTY_RESPONSE_HINT)
        errors.add(line, name, "must be a non-empty string")
        return None
    return value


def _model_name(record: dict, name: str, line: int, errors: _Errors) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {_type_name(value)}")
        return ""
    value = value.strip()
    if len(value) > _MODEL_NAME_MAX:
        errors.add(line, name, f"is longer than {_MODEL_NAME_MAX} characters")
        return ""
    return value


def _object(record: dict, name: str, line: int, errors: _Errors) -> dict:
    value = record.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(line, name, f"must be a JSON object, not {_type_name(value)}")
        return {}
    return value


def _make_pair(
    line: int,
    prompt: tuple[str, list | None],
    text_a: str,
    model_a: str,
    text_b: str,
    model_b: str,
    metadata: dict,
    hashes: tuple[str, str, str] | None = None,
) -> _Pair:
    p_text, p_messages = prompt
    if hashes is None:
        hashes = (prompt_hash(p_text, p_messages), content_hash(text_a), content_hash(text_b))
    p_key, hash_a, hash_b = hashes
    return _Pair(
        line=line,
        prompt_text=p_text,
        prompt_messages=p_messages,
        prompt_key=p_key,
        text_a=text_a,
        model_a=model_a,
        hash_a=hash_a,
        text_b=text_b,
        model_b=model_b,
        hash_b=hash_b,
        key=pair_hash(p_key, hash_a, model_a, hash_b, model_b),
        metadata=metadata,
    )


def _comparison_line(
    record: dict, line: int, errors: _Errors, *, allow_ties: bool, allow_empty: bool
) -> _Pair | None:
    if not _check_storable(record, line, errors):
        return None
    before = len(errors.items)
    has_ab = "response_a" in record or "response_b" in record
    has_trl = "chosen" in record or "rejected" in record
    if has_ab and has_trl:
        errors.add(line, "", "mixes response_a/response_b with chosen/rejected; use one pair")
        return None
    if not has_ab and not has_trl:
        errors.add(line, "", "needs response_a and response_b (or chosen and rejected)")
        return None
    prompt = _prompt(record, line, errors)
    first, second = ("response_a", "response_b") if has_ab else ("chosen", "rejected")
    text_1 = _response_text(record, first, line, errors, allow_empty=allow_empty)
    text_2 = _response_text(record, second, line, errors, allow_empty=allow_empty)
    model_a = _model_name(record, "model_a", line, errors)
    model_b = _model_name(record, "model_b", line, errors)
    if has_trl:
        for name in ("model_a", "model_b"):
            if record.get(name) is not None:
                errors.add(line, name, "is only allowed on response_a/response_b lines")
    metadata = _object(record, "metadata", line, errors)
    if record.keys() - _COMPARISON_KEYS:
        metadata = {**{k: v for k, v in record.items() if k not in _COMPARISON_KEYS}, **metadata}
    gold = record.get("gold")
    if gold is not None:
        if has_trl:
            errors.add(line, "gold", "is only allowed on response_a/response_b lines")
        elif not isinstance(gold, str) or gold.strip().lower() not in GOLD_VALUES:
            errors.add(
                line, "gold", f"must be one of 'a', 'b', 'tie' (got {json.dumps(gold, ensure_ascii=False)})"
            )
        else:
            gold = gold.strip().lower()
            if gold == "tie" and not allow_ties:
                errors.add(line, "gold", "is 'tie' but this project does not allow ties")
    if text_1 is not None and text_2 is not None and text_1 == text_2:
        errors.add(line, second, f"is identical to {first}")
    if len(errors.items) > before:
        return None
    if has_ab:
        pair = _make_pair(line, prompt, text_1, model_a, text_2, model_b, metadata)
        pair.gold = gold or ""
        return pair
    # TRL: chosen/rejected placed on a/b by a content-seeded coin.
    p_key, h_chosen, h_rejected = prompt_hash(*prompt), content_hash(text_1), content_hash(text_2)
    if _chosen_goes_to_a(p_key, h_chosen, h_rejected):
        pair = _make_pair(line, prompt, text_1, "", text_2, "", metadata, (p_key, h_chosen, h_rejected))
        pair.source_preference = "a"
    else:
        pair = _make_pair(line, prompt, text_2, "", text_1, "", metadata, (p_key, h_rejected, h_chosen))
        pair.source_preference = "b"
    return pair


@dataclass(slots=True)
class _Vote:
    line: int
    pair: _Pair
    annotator: str
    choice: str
    strength: int | None
    pool: str
    source: str
    seconds: float | None
    rationale: str
    a_on_left: bool | None


def _short_string(
    record: dict, name: str, line: int, errors: _Errors, max_length: int, *, required: bool
) -> str:
    value = record.get(name)
    if value is None:
        if required:
            errors.add(line, name, "is missing")
        return ""
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {_type_name(value)}")
        return ""
    value = value.strip()
    if not value:
        if required:
            errors.add(line, name, "must be a non-empty string")
        return ""
    if len(value) > max_length:
        errors.add(line, name, f"is longer than {max_length} characters")
        return ""
    return value


def _judgment_line(
    record: dict,
    line: int,
    errors: _Errors,
    warnings: list[LineError],
    *,
    source: str,
    default_source: str,
    username_max: int,
    allow_empty: bool,
) -> _Vote | None:
    if not _check_storable(record, line, errors):
        return None
    before = len(errors.items)
    if (
        "response_a" not in record
        and "response_b" not in record
        and ("chosen" in record or "rejected" in record)
    ):
        errors.add(line, "", "judgment lines need response_a and response_b, not chosen/rejected")
        return None
    prompt = _prompt(record, line, errors)
    line_warnings: list[LineError] = []
    text_a = _response_text(
        record, "response_a", line, errors, allow_empty=allow_empty, lenient=True, warnings=line_warnings
    )
    text_b = _response_text(
        record, "response_b", line, errors, allow_empty=allow_empty, lenient=True, warnings=line_warnings
    )
    model_a = _model_name(record, "model_a", line, errors)
    model_b = _model_name(record, "model_b", line, errors)
    annotator = _short_string(record, "annotator_id", line, errors, username_max, required=True)
    line_source = _short_string(record, "source", line, errors, _SOURCE_MAX, required=False)
    pool = _short_string(record, "pool", line, errors, _POOL_NAME_MAX, required=False)

    choice = None
    label, alias = record.get("label"), record.get("choice")
    if label is None and alias is None:
        errors.add(line, "label", "is missing")
    else:
        for name, value in (("label", label), ("choice", alias)):
            if value is None:
                continue
            if not isinstance(value, str) or value.strip().lower() not in LABEL_VALUES:
                allowed = ", ".join(f"'{v}'" for v in LABEL_VALUES)
                errors.add(
                    line, name, f"must be one of {allowed} (got {json.dumps(value, ensure_ascii=False)})"
                )
            elif choice is not None and value.strip().lower() != choice:
                errors.add(line, "choice", f"contradicts label '{choice}'")
            else:
                choice = value.strip().lower()

    strength = None
    value = record.get("strength")
    if value is not None:
        if isinstance(value, str) and value.strip().lower() in STRENGTH_NAMES:
            strength = STRENGTH_NAMES[value.strip().lower()]
        elif isinstance(value, int) and not isinstance(value, bool) and value in Strength.values:
            strength = value
        else:
            errors.add(
                line,
                "strength",
                "must be null, 'slight', 'clear', 'much' or 1, 2, 3 "
                f"(got {json.dumps(value, ensure_ascii=False)})",
            )
        if strength is not None and choice in (Choice.TIE, Choice.BOTH_BAD):
            errors.add(line, "strength", f"must be null when the label is '{choice}'")

    seconds = record.get("seconds")
    if seconds is not None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            errors.add(
                line,
                "seconds",
                f"must be a number of seconds >= 0 (got {json.dumps(seconds, ensure_ascii=False)})",
            )
            seconds = None
        else:
            seconds = float(seconds)

    rationale = record.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        errors.add(line, "rationale", f"must be a string, not {_type_name(rationale)}")

    a_on_left = None
    display = record.get("display")
    if display is not None:
        if display not in DISPLAY_VALUES:
            errors.add(
                line,
                "display",
                f"must be 'a_left' or 'b_left' (got {json.dumps(display, ensure_ascii=False)})",
            )
        else:
            a_on_left = DISPLAY_VALUES[display]

    metadata = _object(record, "metadata", line, errors)
    _object(record, "extra", line, errors)  # validated; not stored (Judgment has no field for it)
    item_id = record.get("item_id")
    if item_id is not None and not isinstance(item_id, (str, int)):
        errors.add(line, "item_id", f"must be a string or a number, not {_type_name(item_id)}")

    if text_a is not None and text_b is not None and text_a == text_b and model_a == model_b:
        errors.add(
            line,
            "response_b",
            "is identical to response_a (give model_a and model_b if two models said the same)",
        )
    if len(errors.items) > before:
        return None
    warnings.extend(line_warnings)
    effective_source = source or line_source or default_source
    comparison_meta = {
        **({"item_id": item_id} if item_id is not None else {}),
        **({"source": line_source} if line_source else {}),
        **metadata,
    }
    return _Vote(
        line=line,
        pair=_make_pair(line, prompt, text_a, model_a, text_b, model_b, comparison_meta),
        annotator=annotator,
        choice=choice,
        strength=None if choice in (Choice.TIE, Choice.BOTH_BAD) else strength,
        pool=pool or effective_source,
        source=effective_source,
        seconds=seconds,
        rationale=(rationale or "").strip(),
        a_on_left=a_on_left,
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _chunks(items: list, size: int = LOOKUP_CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Ticker:
    def __init__(self, total: int, progress: Progress | None):
        self.total, self.done, self.progress = total, 0, progress

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _bulk_create(model, objs: list, tick: _Ticker) -> None:
    """The ORM's bulk_create, for the few rows (users, memberships) where speed does not matter."""
    for part in _chunks(objs, BATCH_SIZE):
        model.objects.bulk_create(part, batch_size=BATCH_SIZE)
        tick(len(part))


def _finish(tickers: list[_Ticker], progress: Progress | None) -> None:
    """Make the last progress report ``(total, total)`` even when no batch was written."""
    if progress is None:
        return
    last = tickers[-1] if tickers else None
    if last is None or last.done == 0:
        total = last.total if last is not None else 0
        progress(total, total)


def _max_rows(conn, n_columns: int) -> int:
    """Rows per multi-row INSERT: BATCH_SIZE, fewer where bound parameters are limited."""
    limit = conn.features.max_query_params
    if conn.vendor == "sqlite":
        import sqlite3

        conn.ensure_connection()
        try:  # the real limit (32766 since SQLite 3.32), not Django's conservative 999
            limit = conn.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # Python < 3.11
            pass
    if not limit:
        return BATCH_SIZE
    return max(1, min(BATCH_SIZE, limit // n_columns))


def _insert(model, columns: list[str], rows: list[tuple], tick: _Ticker, returning: tuple[str, ...] = ()):
    """INSERT ``rows`` (tuples of values for ``columns``, named by field or attname) in batches.

    Django's ``bulk_create`` spends most of a large import compiling values one by one; this
    writes the same rows with one statement per batch: ``INSERT … SELECT … FROM unnest(array,
    …)`` on PostgreSQL (one parameter per column, so psycopg has no giant query to parse) and a
    multi-row ``VALUES`` list elsewhere. Columns not given get their field default
    (``auto_now_add`` fields the current time). JSON values are Python objects, adapted here.
    With ``returning`` (and ``INSERT … RETURNING``: PostgreSQL, SQLite >= 3.35) the returned
    rows come back in any order; without database support the result is None and the caller
    re-reads what it needs.
    """
    if not rows:
        return []
    conn = connections[router.db_for_write(model)]
    ops = conn.ops
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    given = {meta.get_field(c).attname: i for i, c in enumerate(columns)}
    now = timezone.now()
    # (field, index in the row or None, prepared constant for a field not given)
    plan = []
    for f in fields:
        if f.attname in given:
            plan.append((f, given[f.attname], None))
        elif getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False):
            plan.append((f, None, f.get_db_prep_save(now, conn)))
        else:
            plan.append((f, None, f.get_db_prep_save(f.get_default(), conn)))
    names = ", ".join(ops.quote_name(f.column) for f in fields)
    can_return = bool(returning) and conn.features.can_return_rows_from_bulk_insert
    ret_sql = ""
    if can_return:
        ret_sql = " RETURNING " + ", ".join(ops.quote_name(meta.get_field(c).column) for c in returning)
    table = ops.quote_name(meta.db_table)

    def json_text(value, encoder):
        return None if value is None else json.dumps(value, cls=encoder)

    out: list[tuple] = []
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            given_plan = [(f, i) for f, i, _ in plan if i is not None]
            select = []
            const_params = []
            for f, i, const in plan:
                if i is None:
                    select.append(f"%s::{f.db_type(conn)}")
                    const_params.append(const)
                else:
                    select.append(f"_u.c{i}")
            arrays_sql = ", ".join(
                f"%s::{'text' if isinstance(f, JSONField) else f.db_type(conn)}[]" for f, _ in given_plan
            )
            aliases = ", ".join(f"c{i}" for _, i in given_plan)
            select_sql = ", ".join(
                f"_u.c{i}::jsonb" if i is not None and isinstance(f, JSONField) else s
                for (f, i, _), s in zip(plan, select)
            )
            sql = (
                f"INSERT INTO {table} ({names}) SELECT {select_sql}"
                f" FROM unnest({arrays_sql}) AS _u({aliases})"
                f"{ret_sql}"
            )
            for part in _chunks(rows, BATCH_SIZE):
                arrays = []
                for f, i in given_plan:
                    column = [row[i] for row in part]
                    if isinstance(f, JSONField):
                        column = [json_text(v, f.encoder) for v in column]
                    arrays.append(column)
                cursor.execute(sql, const_params + arrays)
                if can_return:
                    out.extend(cursor.fetchall())
                tick(len(part))
        else:
            json_positions = [
                (n, f.encoder)
                for n, (f, i, _) in enumerate(plan)
                if i is not None and isinstance(f, JSONField)
            ]
            order = [(i, const) for _, i, const in plan]
            row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
            head = f"INSERT INTO {table} ({names}) VALUES "
            for part in _chunks(rows, _max_rows(conn, len(fields))):
                params: list = []
                for row in part:
                    values = [row[i] if i is not None else const for i, const in order]
                    for pos, encoder in json_positions:
                        values[pos] = json_text(values[pos], encoder)
                    params.extend(values)
                cursor.execute(head + ", ".join([row_sql] * len(part)) + ret_sql, params)
                if can_return:
                    out.extend(cursor.fetchall())
                tick(len(part))
    return out if can_return or not returning else None


@dataclass
class _PairWrite:
    ids: dict[str, int]  # pair_hash -> comparison id
    created: set[str]
    prompts_created: int
    responses_created: int
    gold_created: int


def _existing(project: Project, round_: int, pairs: list[_Pair]) -> tuple[dict[str, int], dict[str, int]]:
    """The prompts (hash -> id) and comparisons (pair_hash -> id) of ``pairs`` already stored."""
    prompt_ids: dict[str, int] = {}
    for chunk in _chunks(list(dict.fromkeys(p.prompt_key for p in pairs))):
        prompt_ids.update(
            Prompt.objects.filter(project=project, content_hash__in=chunk).values_list("content_hash", "pk")
        )
    comparison_ids: dict[str, int] = {}
    for chunk in _chunks([p.key for p in pairs]):
        comparison_ids.update(
            Comparison.objects.filter(project=project, round=round_, pair_hash__in=chunk).values_list(
                "pair_hash", "pk"
            )
        )
    return prompt_ids, comparison_ids


def _responses_of(prompt_ids: Iterable[int]) -> Iterator[tuple[tuple[int, str, str], int]]:
    for chunk in _chunks(sorted(set(prompt_ids))):
        for pid, h, m, pk in Response.objects.filter(prompt_id__in=chunk).values_list(
            "prompt_id", "content_hash", "model_name", "pk"
        ):
            yield (pid, h, m), pk


def _write_pairs(project: Project, round_: int, pairs: list[_Pair], tick_factory) -> _PairWrite:
    """Create the prompts, responses, comparisons and gold answers of ``pairs`` (unique by key)
    that do not exist yet. Runs inside the caller's transaction."""
    prompt_ids, comparison_ids = _existing(project, round_, pairs)
    new_pairs = [p for p in pairs if p.key not in comparison_ids]

    new_prompts: dict[str, tuple] = {}
    for p in new_pairs:
        if p.prompt_key not in prompt_ids and p.prompt_key not in new_prompts:
            new_prompts[p.prompt_key] = (project.pk, p.prompt_text, p.prompt_messages, p.prompt_key)
    # Responses of the prompts that already existed (new prompts have none yet).
    response_ids = dict(
        _responses_of(prompt_ids[p.prompt_key] for p in new_pairs if p.prompt_key in prompt_ids)
    )
    # Keyed by prompt *hash* until the new prompts have ids.
    new_responses: dict[tuple[str, str, str], str] = {}
    for p in new_pairs:
        pid = prompt_ids.get(p.prompt_key)
        for h, m, text in ((p.hash_a, p.model_a, p.text_a), (p.hash_b, p.model_b, p.text_b)):
            rk = (p.prompt_key, h, m)
            if rk not in new_responses and (pid is None or (pid, h, m) not in response_ids):
                new_responses[rk] = text
    golds = [p for p in new_pairs if p.gold]
    tick = tick_factory(len(new_prompts) + len(new_responses) + len(new_pairs) + len(golds))

    rows = _insert(
        Prompt,
        ["project", "text", "messages", "content_hash"],
        list(new_prompts.values()),
        tick,
        returning=("content_hash", "id"),
    )
    if rows is None:
        rows = _existing(project, round_, [p for p in new_pairs if p.prompt_key in new_prompts])[0].items()
    prompt_ids.update(rows)

    response_rows = [(prompt_ids[ph], text, m, h, round_) for (ph, h, m), text in new_responses.items()]
    rows = _insert(
        Response,
        ["prompt", "text", "model_name", "content_hash", "round"],
        response_rows,
        tick,
        returning=("prompt", "content_hash", "model_name", "id"),
    )
    if rows is None:
        response_ids.update(_responses_of(r[0] for r in response_rows))
    else:
        response_ids.update(((pid, h, m), pk) for pid, h, m, pk in rows)

    comparison_rows = []
    for p in new_pairs:
        pid = prompt_ids[p.prompt_key]
        comparison_rows.append(
            (
                project.pk,
                pid,
                response_ids[(pid, p.hash_a, p.model_a)],
                response_ids[(pid, p.hash_b, p.model_b)],
                round_,
                p.key,
                p.metadata,
                p.source_preference,
                bool(p.gold),
            )
        )
    rows = _insert(
        Comparison,
        [
            "project",
            "prompt",
            "response_a",
            "response_b",
            "round",
            "pair_hash",
            "metadata",
            "source_preference",
            "is_gold",
        ],
        comparison_rows,
        tick,
        returning=("pair_hash", "id"),
    )
    if rows is None:
        rows = _existing(project, round_, new_pairs)[1].items()
    comparison_ids.update(rows)

    _insert(GoldAnswer, ["comparison", "answer"], [(comparison_ids[p.key], p.gold) for p in golds], tick)
    return _PairWrite(
        ids=comparison_ids,
        created={p.key for p in new_pairs},
        prompts_created=len(new_prompts),
        responses_created=len(response_rows),
        gold_created=len(golds),
    )


def _atomic_with_retry(write: Callable[[], Any]):
    """Run ``write`` in one transaction; retry once if a concurrent import inserted the same
    rows first (a unique constraint fired), re-reading what exists."""
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return write()
        except IntegrityError:
            if attempt == 2:
                raise


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


def import_comparisons(
    project: Project,
    fileobj,
    *,
    filename: str = "",
    fmt: str | None = None,
    round: int | None = None,  # noqa: A002 - the public name users know
    allow_empty_responses: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Validate a JSONL or CSV file of comparisons and import it into ``project``.

    ``fileobj`` is any binary or text file-like object (an UploadedFile, ``open(path, "rb")``,
    io.BytesIO / io.StringIO). ``fmt`` is "jsonl" or "csv"; by default it is guessed from
    ``filename``'s extension, else from the content. ``round`` defaults to
    ``project.current_round``. Empty responses are refused unless ``allow_empty_responses``.
    ``progress(done, total)`` counts rows written and ends with ``done == total`` (``(0, 0)``
    when there was nothing new). Raises :class:`ImportValidationError` (nothing written) when
    any line is bad.
    """
    round_ = project.current_round if round is None else int(round)
    errors = _Errors()
    _fmt, records = _records(fileobj, filename or getattr(fileobj, "name", "") or "", fmt, errors)
    pairs: dict[str, _Pair] = {}
    lines = 0
    for line, record in records:
        lines += 1
        pair = _comparison_line(
            record, line, errors, allow_ties=project.allow_ties, allow_empty=allow_empty_responses
        )
        if pair is not None and pair.key not in pairs:
            pairs[pair.key] = pair
    if lines == 0 and not errors.items:
        errors.add(0, "", "the file has no comparisons")
    errors.raise_if_any()

    unique = list(pairs.values())
    tickers: list[_Ticker] = []

    def tick_factory(total: int) -> _Ticker:
        tickers.append(_Ticker(total, progress))
        return tickers[-1]

    result = _atomic_with_retry(lambda: _write_pairs(project, round_, unique, tick_factory))
    _finish(tickers, progress)
    created = len(result.created)
    return ImportResult(
        lines=lines,
        created=created,
        duplicates=lines - created,
        gold=result.gold_created,
        prompts_created=result.prompts_created,
        responses_created=result.responses_created,
    )


def import_judgments(
    project: Project,
    fileobj,
    *,
    filename: str = "",
    fmt: str | None = None,
    source: str = "",
    round: int | None = None,  # noqa: A002
    on_duplicate: str = "error",
    allow_empty_responses: bool = True,
    progress: Progress | None = None,
) -> JudgmentImportResult:
    """Import externally collected votes as judgments (see the module docstring for the lines).

    Each distinct ``annotator_id`` becomes (or reuses) a User with that username, an unusable
    password and ``is_active=False``, and an annotator Membership in ``project`` whose pool is the
    line's ``pool`` or, without one, a pool named after the source (created when missing).
    ``source`` (max 100 characters) overrides each line's ``source``; without either, the file
    name is used. Comparisons are created or reused exactly as :func:`import_comparisons` does;
    their ``n_judgments`` and ``slots_taken`` grow by the judgments added and ``is_open`` becomes
    ``slots_taken < project.overlap`` (gold comparisons stay open).

    One judgment per (annotator, comparison): two lines by the same annotator on the same
    comparison are an error naming the later line unless ``on_duplicate`` is "first" or "last"
    (keep that one). A judgment already in the database is skipped and counted as a duplicate.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, not {on_duplicate!r}")
    source = (source or "").strip()
    if len(source) > _SOURCE_MAX:
        raise ValueError(f"source is longer than {_SOURCE_MAX} characters")
    round_ = project.current_round if round is None else int(round)
    User = get_user_model()
    username_field = User.USERNAME_FIELD
    username_max = User._meta.get_field(username_field).max_length or 150
    name = filename or getattr(fileobj, "name", "") or ""
    default_source = os.path.splitext(os.path.basename(name))[0][:_SOURCE_MAX] or "import"

    errors = _Errors()
    warnings: list[LineError] = []
    _fmt, records = _records(fileobj, name, fmt, errors)
    votes: dict[tuple[str, str], _Vote] = {}
    dropped = 0
    lines = 0
    for line, record in records:
        lines += 1
        vote = _judgment_line(
            record,
            line,
            errors,
            warnings,
            source=source,
            default_source=default_source,
            username_max=username_max,
            allow_empty=allow_empty_responses,
        )
        if vote is None:
            continue
        key = (vote.annotator, vote.pair.key)
        earlier = votes.get(key)
        if earlier is None:
            votes[key] = vote
        elif on_duplicate == "error":
            errors.add(
                line,
                "annotator_id",
                f"'{vote.annotator}' already judged this comparison on line "
                f"{earlier.line}; one judgment per annotator and comparison",
            )
        else:
            dropped += 1
            if on_duplicate == "last":
                del votes[key]  # re-insert so file order follows the kept line
                votes[key] = vote
    if lines == 0 and not errors.items:
        errors.add(0, "", "the file has no judgments")
    errors.raise_if_any()

    vote_list = list(votes.values())
    pairs: dict[str, _Pair] = {}
    for v in sorted(vote_list, key=lambda v: v.line):
        pairs.setdefault(v.pair.key, v.pair)

    def write() -> JudgmentImportResult:
        ticker: list[_Ticker] = []

        def tick_factory(total: int) -> _Ticker:
            # The comparison rows, plus users, memberships and judgments still to come.
            t = _Ticker(total + 2 * len({v.annotator for v in vote_list}) + len(vote_list), progress)
            ticker.append(t)
            return t

        pw = _write_pairs(project, round_, list(pairs.values()), tick_factory)
        tick = ticker[0]

        # Annotators
        usernames = list(dict.fromkeys(v.annotator for v in vote_list))
        user_ids: dict[str, int] = {}
        for chunk in _chunks(usernames):
            user_ids.update(
                User.objects.filter(**{f"{username_field}__in": chunk}).values_list(username_field, "pk")
            )
        new_users = [
            User(**{username_field: u}, is_active=False, password=make_password(None))
            for u in usernames
            if u not in user_ids
        ]
        _bulk_create(User, new_users, tick)
        if new_users:
            for chunk in _chunks([getattr(u, username_field) for u in new_users]):
                user_ids.update(
                    User.objects.filter(**{f"{username_field}__in": chunk}).values_list(username_field, "pk")
                )
        tick(len(usernames) - len(new_users))

        # Pools (few) and memberships
        pool_names = list(dict.fromkeys(v.pool for v in vote_list))
        pool_ids = dict(Pool.objects.filter(project=project, name__in=pool_names).values_list("name", "pk"))
        pools_created = 0
        for pool_name in pool_names:
            if pool_name not in pool_ids:
                pool_ids[pool_name] = Pool.objects.create(project=project, name=pool_name).pk
                pools_created += 1
        member_of: dict[int, int] = {}
        for chunk in _chunks(list(user_ids.values())):
            member_of.update(
                Membership.objects.filter(project=project, user_id__in=chunk).values_list("user_id", "pk")
            )
        first_pool: dict[str, str] = {}
        for v in vote_list:
            first_pool.setdefault(v.annotator, v.pool)
        new_members = [
            Membership(
                project=project, user_id=user_ids[u], role=Role.ANNOTATOR, pool_id=pool_ids[first_pool[u]]
            )
            for u in usernames
            if user_ids[u] not in member_of
        ]
        _bulk_create(Membership, new_members, tick)
        tick(len(usernames) - len(new_members))

        # Judgments: skip the ones already in the database.
        comparison_ids = sorted({pw.ids[k] for k in pairs})
        existing: set[tuple[int, int]] = set()
        for chunk in _chunks(comparison_ids):
            existing.update(
                Judgment.objects.filter(comparison_id__in=chunk).values_list("annotator_id", "comparison_id")
            )
        judgments = []
        display_unknown = 0
        for v in vote_list:
            uid, cid = user_ids[v.annotator], pw.ids[v.pair.key]
            if (uid, cid) in existing:
                continue
            display_unknown += v.a_on_left is None
            existing.add((uid, cid))
            judgments.append(
                (
                    project.pk,
                    cid,
                    uid,
                    pool_ids[v.pool],
                    v.a_on_left,  # None: display order unknown, stored as NULL
                    v.choice,
                    v.strength,
                    v.rationale,
                    v.seconds,
                    v.source,
                )
            )
        _insert(
            Judgment,
            [
                "project",
                "comparison",
                "annotator",
                "pool",
                "a_on_left",
                "choice",
                "strength",
                "rationale",
                "seconds",
                "source",
            ],
            judgments,
            tick,
        )
        tick(len(vote_list) - len(judgments))

        # Counters: n_judgments and slots_taken grow by the judgments added; is_open follows.
        added: dict[int, int] = defaultdict(int)
        for j in judgments:
            added[j[1]] += 1
        by_count: dict[int, list[int]] = defaultdict(list)
        for cid, n in added.items():
            by_count[n].append(cid)
        for n, cids in by_count.items():
            for chunk in _chunks(sorted(cids)):
                Comparison.objects.filter(pk__in=chunk).update(
                    n_judgments=F("n_judgments") + n, slots_taken=F("slots_taken") + n
                )
        open_expr = ExpressionWrapper(
            Q(is_gold=True) | Q(slots_taken__lt=project.overlap), output_field=BooleanField()
        )
        for chunk in _chunks(sorted(added)):
            Comparison.objects.filter(pk__in=chunk).update(is_open=open_expr)

        return JudgmentImportResult(
            lines=lines,
            judgments_created=len(judgments),
            duplicates=lines - len(judgments),
            comparisons_created=len(pw.created),
            comparisons_reused=len(pairs) - len(pw.created),
            annotators_created=len(new_users),
            memberships_created=len(new_members),
            pools_created=pools_created,
            prompts_created=pw.prompts_created,
            responses_created=pw.responses_created,
            display_unknown=display_unknown,
            warnings=warnings,
        )

    result = _atomic_with_retry(write)
    if result.judgments_created:
        judgments_imported.send(sender=Judgment, project=project, count=result.judgments_created)
    return result
