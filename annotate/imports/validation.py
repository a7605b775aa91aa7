"""Validating one record: a comparison line into a ``Pair``, a judgment line into a ``Vote``,
each error named by line and field. Also the content hashes that de-duplicate prompts and
comparisons (``prompt_hash``, ``pair_hash``) and the seeded coin that places a TRL line's
chosen response on side a or b. No database writes."""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

from ..models import Choice, Judgment, Pool, Response, Strength, content_hash
from .reading import check_storable, type_name
from .results import Errors, LineError

GOLD_VALUES = ("a", "b", "tie")
LABEL_VALUES = (Choice.A.value, Choice.B.value, Choice.TIE.value, Choice.BOTH_BAD.value)
STRENGTH_NAMES = {"slight": Strength.SLIGHT.value, "clear": Strength.CLEAR.value, "much": Strength.MUCH.value}
DISPLAY_VALUES = {"a_left": True, "b_left": False}

_MODEL_NAME_MAX = Response._meta.get_field("model_name").max_length
_POOL_NAME_MAX = Pool._meta.get_field("name").max_length
SOURCE_MAX = Judgment._meta.get_field("source").max_length

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


@dataclass(slots=True)
class Pair:
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


def _messages(value: list, line: int, name: str, errors: Errors) -> list[dict] | None:
    ok = True
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            errors.add(line, f"{name}[{i}]", f"must be a chat message object, not {type_name(m)}")
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


def _prompt(record: dict, line: int, errors: Errors) -> tuple[str, list | None] | None:
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
    errors.add(line, "prompt", f"must be a string or a list of chat messages, not {type_name(value)}")
    return None


EMPTY_RESPONSE_HINT = (
    "Empty responses are refused unless allowed: import with allow_empty_responses=True "
    "(--allow-empty-responses) if the file means them."
)


def _response_text(
    record: dict,
    name: str,
    line: int,
    errors: Errors,
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
            warnings.append(LineError(line, name, f"{type_name(value)} taken as the text {text!r}"))
        return text
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {type_name(value)}")
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


def _model_name(record: dict, name: str, line: int, errors: Errors) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {type_name(value)}")
        return ""
    value = value.strip()
    if len(value) > _MODEL_NAME_MAX:
        errors.add(line, name, f"is longer than {_MODEL_NAME_MAX} characters")
        return ""
    return value


def _object(record: dict, name: str, line: int, errors: Errors) -> dict:
    value = record.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(line, name, f"must be a JSON object, not {type_name(value)}")
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
) -> Pair:
    p_text, p_messages = prompt
    if hashes is None:
        hashes = (prompt_hash(p_text, p_messages), content_hash(text_a), content_hash(text_b))
    p_key, hash_a, hash_b = hashes
    return Pair(
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


def comparison_line(
    record: dict, line: int, errors: Errors, *, allow_ties: bool, allow_empty: bool
) -> Pair | None:
    if not check_storable(record, line, errors):
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
class Vote:
    line: int
    pair: Pair
    annotator: str
    choice: str
    strength: int | None
    pool: str
    source: str
    seconds: float | None
    rationale: str
    a_on_left: bool | None


def _short_string(
    record: dict, name: str, line: int, errors: Errors, max_length: int, *, required: bool
) -> str:
    value = record.get(name)
    if value is None:
        if required:
            errors.add(line, name, "is missing")
        return ""
    if not isinstance(value, str):
        errors.add(line, name, f"must be a string, not {type_name(value)}")
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


def judgment_line(
    record: dict,
    line: int,
    errors: Errors,
    warnings: list[LineError],
    *,
    source: str,
    default_source: str,
    username_max: int,
    allow_empty: bool,
) -> Vote | None:
    if not check_storable(record, line, errors):
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
    line_source = _short_string(record, "source", line, errors, SOURCE_MAX, required=False)
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
        errors.add(line, "rationale", f"must be a string, not {type_name(rationale)}")

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
        errors.add(line, "item_id", f"must be a string or a number, not {type_name(item_id)}")

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
    return Vote(
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
