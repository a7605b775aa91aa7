"""Hyperparameters of a run, checked in the web process against ``training.config.TrainConfig``
(which needs no torch): names, types, values, and the run's full config.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import TrainConfig
from ..models import Recipe, TrainingRun
from .errors import TrainingError

#: Fields the run sets itself; not accepted as hyperparameters.
RESERVED_FIELDS = {"recipe"}


def train_config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def train_config_defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Convert ``value`` (from JSON, a form or ``--set k=v``) to the type of field ``name``."""
    ann = str(annotation).replace(" ", "")
    optional = "None" in ann.split("|") or ann.startswith("Optional[")
    base = [part for part in ann.split("|") if part != "None"]
    base_ann = base[0] if base else ann
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", ""}):
        if optional:
            return None
        raise TrainingError(f"hyperparameter {name!r} cannot be empty", "hyperparameters")
    try:
        if base_ann == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError("expected true or false")
        if base_ann == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            if isinstance(value, str):
                number = float(value.strip())
                if not number.is_integer():
                    raise ValueError("expected an integer")
                return int(number)
            return int(value)
        if base_ann == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
            return number
        if base_ann == "str":
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value.strip()
        if base_ann.startswith("tuple["):
            if isinstance(value, str):
                text = value.strip()
                value = (
                    json.loads(text)
                    if text.startswith("[")
                    else [v.strip() for v in text.split(",") if v.strip()]
                )
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            inner = base_ann[len("tuple[") : -1]
            kinds = [k for k in inner.split(",") if k != "..."]
            kind = kinds[0] if kinds else "str"
            if kind == "float":
                return [float(v) for v in value]
            if kind == "int":
                return [int(v) for v in value]
            return [str(v) for v in value]
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise TrainingError(
            f"hyperparameter {name!r}: {value!r} is not valid ({exc})", "hyperparameters"
        ) from exc
    return value


def parse_set_options(options: list[str] | None) -> dict[str, str]:
    """``["lr=1e-4", "max_steps=20"]`` -> ``{"lr": "1e-4", "max_steps": "20"}`` (strings; see
    :func:`validate_hyperparameters` for the types)."""
    out: dict[str, str] = {}
    for item in options or []:
        if "=" not in item:
            raise TrainingError(f"--set {item!r}: expected NAME=VALUE", "hyperparameters")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def validate_hyperparameters(values: dict | None, recipe: str = Recipe.SFT_DPO) -> dict:
    """Check ``values`` against ``TrainConfig``: unknown names and bad types are a
    ``TrainingError``; the values are converted to their field's type, and the whole config
    (defaults + these values + the recipe) must pass ``TrainConfig.validate()``. Returns the
    converted values (only the ones given, so a run records what differs from the defaults)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise TrainingError("hyperparameters must be a JSON object of TrainConfig fields", "hyperparameters")
    if recipe not in Recipe.values:
        raise TrainingError(f"recipe must be one of {', '.join(Recipe.values)}, not {recipe!r}", "recipe")
    fields = train_config_fields()
    reserved = sorted(set(values) & RESERVED_FIELDS)
    if reserved:
        raise TrainingError(
            f"set {', '.join(reserved)} with the run's own field, not as a hyperparameter", "hyperparameters"
        )
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainingError(
            f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(set(fields) - RESERVED_FIELDS))}",
            "hyperparameters",
        )
    clean = {}
    for name, value in values.items():
        clean[name] = _coerce(name, fields[name].type, value)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in clean.items()}
    try:
        TrainConfig(recipe=recipe, **kwargs).validate()
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"invalid hyperparameters: {exc}", "hyperparameters") from exc
    return clean


def effective_config(run: TrainingRun) -> dict:
    """The run's full TrainConfig as a dict (defaults overlaid with its hyperparameters)."""
    cfg = train_config_defaults()
    cfg.update(run.hyperparameters or {})
    cfg["recipe"] = run.recipe
    if cfg.get("reward_model"):  # a registered reward model's name -> its folder, for the worker
        from ..models import ModelVersion

        rm = ModelVersion.objects.filter(name=cfg["reward_model"]).first()
        if rm is not None:
            cfg["reward_model"] = rm.path
    return cfg
