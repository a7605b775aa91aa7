"""Hyperparameters of a run, checked in the web process against ``training.config.TrainConfig``
(which needs no torch): which fields a request may set (an explicit allow-list), their types and
values, and the run's full config as the worker gets it.

Paths are never a request's to choose. ``SERVER_CHOSEN`` fields (folders the worker writes to or
loads from) are set by the server under the data folder -- the run's own ``out_dir`` beneath
``PREFLOOP_RUNS_DIR`` -- and a reward model is named by its registry name, never by a folder.
A field added to ``TrainConfig`` is refused until it is listed in ``SETTABLE_FIELDS``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from django.db.models import Q

from ..config import TrainConfig
from ..models import ModelKind, Recipe, TrainingRun
from .errors import TrainingError

#: Fields the run sets itself; not accepted as hyperparameters.
RESERVED_FIELDS = {"recipe"}
#: Path-valued fields: the server chooses them (under the run's ``out_dir``), never a request.
SERVER_CHOSEN_FIELDS = {"ref_cache_dir"}
#: The ``TrainConfig`` fields a run's hyperparameters may set (page, API and ``manage.py train``).
#: ``reward_model`` is the *name* of a registered reward model (see ``runs.check_reward_model``).
SETTABLE_FIELDS = frozenset(
    {
        # optimisation
        "lr", "epochs", "max_steps", "sft_lr", "sft_epochs", "sft_max_steps", "batch_size", "grad_accum",
        "weight_decay", "adam_betas", "max_grad_norm", "lr_schedule", "warmup_steps", "shuffle",
        # data
        "max_length", "max_prompt_length", "min_pairs", "eval_fraction", "eval_every", "eval_batch_size",
        "pack", "unpadded",
        # DPO
        "beta", "loss_type", "label_smoothing", "use_weights", "use_soft_labels", "precompute_ref_logps",
        # model
        "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "gradient_checkpointing",
        "logits_chunk_elements",
        # runtime
        "seed", "precision", "device", "cpu_threads", "checkpoint_every", "keep_checkpoints", "log_every",
        # reward model
        "rm_lr", "rm_epochs", "rm_max_steps", "rm_margin", "rm_margin_scale", "rm_center_coef",
        "rm_norm_samples", "reward_model",
        # PPO
        "ppo_iterations", "ppo_lr", "ppo_batch_size", "ppo_mini_batches", "ppo_micro_batch_size",
        "ppo_epochs", "ppo_clip", "ppo_value_clip", "ppo_vf_coef", "ppo_entropy_coef", "ppo_gamma",
        "ppo_lam", "ppo_kl_coef", "ppo_kl_target", "ppo_kl_horizon", "ppo_kl_estimator",
        "ppo_whiten_rewards", "ppo_response_length", "ppo_temperature", "ppo_missing_eos_penalty",
        "ppo_value_model", "ppo_checkpoint_every", "ppo_samples_per_log",
    }
)
#: Module names LoRA may target: identifiers, optionally dotted (never a path).
_MODULE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


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
    server = sorted(set(values) & SERVER_CHOSEN_FIELDS)
    if server:
        raise TrainingError(
            f"{', '.join(server)} cannot be set: the server chooses its folders (inside the run's output "
            f"folder under the data folder)",
            "hyperparameters",
        )
    unknown = sorted(set(values) - (SETTABLE_FIELDS & set(fields)))
    if unknown:
        raise TrainingError(
            f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(SETTABLE_FIELDS & set(fields)))}",
            "hyperparameters",
        )
    clean = {}
    for name, value in values.items():
        clean[name] = _coerce(name, fields[name].type, value)
    _check_names(clean)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in clean.items()}
    try:
        TrainConfig(recipe=recipe, **kwargs).validate()
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"invalid hyperparameters: {exc}", "hyperparameters") from exc
    return clean


def _check_names(clean: dict) -> None:
    """Name-valued fields hold names, not paths: ``reward_model`` a registry name (resolved to its
    folder by :func:`effective_config`), ``lora_target_modules`` module names."""
    from .registry import NAME_RE

    rm = clean.get("reward_model")
    if rm is not None and not NAME_RE.match(rm):
        raise TrainingError(
            f"reward_model is the name of a registered reward model, not {rm!r}", "reward_model"
        )
    for module in clean.get("lora_target_modules") or ():
        if not module or not set(module) <= _MODULE_NAME_CHARS:
            raise TrainingError(f"lora_target_modules: {module!r} is not a module name", "hyperparameters")


def effective_config(run: TrainingRun) -> dict:
    """The run's full TrainConfig as a dict (defaults overlaid with its hyperparameters), as the
    worker gets it. Only ``SETTABLE_FIELDS`` are taken from the stored hyperparameters (a row
    stored before the allow-list cannot smuggle a path in); ``ref_cache_dir`` stays the server's
    default (``out_dir/cache``); ``reward_model`` becomes the registered model's folder."""
    cfg = train_config_defaults()
    cfg.update({k: v for k, v in (run.hyperparameters or {}).items() if k in SETTABLE_FIELDS and k in cfg})
    for name in SERVER_CHOSEN_FIELDS:
        cfg[name] = None
    cfg["recipe"] = run.recipe
    if cfg.get("reward_model"):  # a registered reward model's name -> its folder, for the worker
        from ..models import ModelVersion

        from .registry import NAME_RE

        rm = ModelVersion.objects.filter(name=cfg["reward_model"], kind=ModelKind.REWARD).filter(
            Q(project__isnull=True) | Q(project_id=run.project_id)
        ).first()
        if rm is not None:
            cfg["reward_model"] = rm.path
        elif not NAME_RE.match(str(cfg["reward_model"])):
            # not a registry name (a folder stored before names were checked): never a path
            cfg["reward_model"] = None
    return cfg
