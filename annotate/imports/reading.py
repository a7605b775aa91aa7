"""Reading an import file into ``(line number, record)`` pairs: bytes to UTF-8 text, the format
(JSONL or CSV, from the file name or the content), JSON that Python accepts but a database
cannot store (NaN, lone surrogates, NUL), line sizes, and CSV cells to values. Errors go to the
collector with their line; nothing here knows what a record means."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any, Callable, Iterator

from django.conf import settings

from .results import Errors, ImportValidationError, LineError

# CSV cells that stay strings even when empty (so an empty cell reads "must be a non-empty string").
_CSV_TEXT_COLUMNS = {"prompt", "response_a", "response_b", "chosen", "rejected"}
_CSV_JSON_COLUMNS = {"metadata", "extra"}


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


def type_name(value: Any) -> str:
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


def check_storable(record: dict, line: int, errors: Errors) -> bool:
    ok = True
    for key, value in record.items():
        problem = _unstorable(value) or _unstorable(key)
        if problem:
            errors.add(line, key if not _unstorable(key) else "", problem)
            ok = False
    return ok


def _check_line_sizes(text: str, errors: Errors) -> None:
    limit = settings.PREFLOOP_MAX_IMPORT_LINE_BYTES
    if len(text) <= limit // 4:  # fast path: no line can exceed the limit
        return
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) * 4 > limit:
            size = len(line.encode("utf-8"))
            if size > limit:
                errors.add(number, "", f"is {size} bytes, over the limit of {limit} bytes")


def _iter_jsonl(text: str, errors: Errors) -> Iterator[tuple[int, dict]]:
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
            errors.add(number, "", f"must be a JSON object, not {type_name(value)}{hint}")
            continue
        yield number, value


#: ``check(header) -> [(column, message)]``: what a CSV header lacks for the kind of import.
HeaderCheck = Callable[[list[str]], list[tuple[str, str]]]


def comparison_columns(header: list[str]) -> list[tuple[str, str]]:
    """What a comparisons CSV header lacks: ``prompt`` and a whole pair of response columns."""
    have = set(header)
    missing = [("prompt", "the header has no column 'prompt'")] if "prompt" not in have else []
    for pair in (("response_a", "response_b"), ("chosen", "rejected")):
        if have & set(pair):
            missing += [(c, f"the header has no column '{c}' (it has '{other}')")
                        for c, other in (pair, pair[::-1]) if c not in have]
            return missing
    return missing + [("", "the header has no response columns: name response_a and response_b, or chosen and rejected")]


def judgment_columns(header: list[str]) -> list[tuple[str, str]]:
    """What a votes CSV header lacks: prompt, both responses, annotator_id and label (or choice)."""
    have = set(header)
    missing = [(c, f"the header has no column '{c}'") for c in ("prompt", "response_a", "response_b", "annotator_id")
               if c not in have]
    if not have & {"label", "choice"}:
        missing.append(("label", "the header has no column 'label' (or 'choice')"))
    return missing


def _iter_csv(text: str, errors: Errors, check: HeaderCheck | None = None) -> Iterator[tuple[int, dict]]:
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
    if check is not None:
        missing = check(header)
        for column, message in missing:  # one error per missing column, not one per row
            errors.add(1, column, message)
        if missing:
            return
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


def read_records(
    fileobj, filename: str, fmt: str | None, errors: Errors, csv_header: HeaderCheck | None = None
) -> tuple[str, Iterator[tuple[int, dict]]]:
    """``(format, records)``: each record a ``(line, dict)``. A CSV header is checked first with
    ``csv_header`` (:func:`comparison_columns`, :func:`judgment_columns`): a column the whole file
    lacks is one error naming it (line 1), and no row is read."""
    text = _read_text(fileobj)
    if not text.strip():
        raise ImportValidationError([LineError(0, "", "the file is empty")])
    fmt = (fmt or _guess_format(filename, text)).lower()
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown import format {fmt!r}: expected 'jsonl' or 'csv'")
    _check_line_sizes(text, errors)
    return fmt, (_iter_jsonl(text, errors) if fmt == "jsonl" else _iter_csv(text, errors, csv_header))
