"""Training services: the model registry, launching / cancelling / recovering runs, samples and
the next annotation round. The views, the REST API and the management commands call these.

Nothing in this module imports torch or transformers at import time: the web process validates
everything it can (hyperparameters against ``training.config.TrainConfig``, which needs no
torch; the model folder's files; the export's size; prompt lengths estimated from characters)
and the GPU worker (``training.tasks``) does the rest before any compute (the model actually
loads, token lengths, CUDA present).

Loading models happens only in the worker: ``run_sampling_job`` (and ``sample_next_round``,
for a shell or a command) import the generation code from ``training.tasks`` lazily.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import re
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotate.models import Project, Prompt
from evaluation.models import Export
from evaluation.models import JobStatus as ExportStatus

from .config import TrainConfig
from .models import (
    GenerationSample,
    JobStatus,
    ModelVersion,
    Recipe,
    RunStatus,
    SamplingJob,
    TrainingMetric,
    TrainingRun,
)

log = logging.getLogger(__name__)

#: A running run whose heartbeat is older than this (seconds) is considered lost.
DEFAULT_HEARTBEAT_STALE_S = 120
#: Seconds between heartbeats written by the worker while a run is running.
HEARTBEAT_INTERVAL_S = 5.0
#: Runs keep this many characters of log (the tail).
LOG_MAX_CHARS = 100_000
#: A prompt this many characters per allowed token is surely longer than ``max_length``
#: (English BPE averages about 4 characters per token; no common tokenizer averages 8).
MAX_CHARS_PER_TOKEN = 8
#: Fields the run sets itself; not accepted as hyperparameters.
RESERVED_FIELDS = {"recipe"}


class TrainingError(ValueError):
    """A request the training services refuse, with a message fit for the user.

    ``field`` names the form / API field at fault, when there is one.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ModelFolderError(TrainingError):
    """A folder that is not a usable Hugging Face model folder."""


# =============================================================================================
# Hyperparameters (``training.config.TrainConfig``: no torch)
# =============================================================================================


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
    return cfg


# =============================================================================================
# The model registry
# =============================================================================================

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{what} {path} is not valid JSON: {exc}", "path") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{what} {path} is not a JSON object", "path")
    return data


def _check_tokenizer(folder: Path) -> str:
    """The folder's tokenizer loads (``tokenizer.json`` through the ``tokenizers`` library, which
    needs no torch); returns a short description."""
    tok_json = folder / "tokenizer.json"
    if tok_json.exists():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tok_json))
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear error
            raise ModelFolderError(f"the tokenizer in {folder} does not load: {exc}", "path") from exc
        return f"tokenizer.json, {tok.get_vocab_size()} tokens"
    for name in TOKENIZER_FILES[1:]:
        if (folder / name).exists():
            return name
    raise ModelFolderError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})", "path")


def validate_model_folder(path: str | os.PathLike) -> dict:
    """Check that ``path`` is a loadable Hugging Face causal-LM folder, without torch.

    Accepts a full model folder (``config.json`` with a ``model_type``, weights, a tokenizer) or a
    PEFT adapter folder (``adapter_config.json`` whose ``base_model_name_or_path`` is itself a
    valid local folder). Returns ``{"is_adapter", "model_type", "tokenizer", "base_path"?}``;
    raises :class:`ModelFolderError` naming the problem. The GPU worker loads the weights for
    real before any training (``training.tiny_model.load_model_and_tokenizer``).
    """
    if not str(path).strip():
        raise ModelFolderError("give the path of a local model folder", "path")
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        raise ModelFolderError(f"{path} is not an absolute path", "path")
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist", "path")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder", "path")
    config_path = folder / "config.json"
    adapter_path = folder / "adapter_config.json"
    if adapter_path.exists() and not config_path.exists():
        adapter = _read_json(adapter_path, "adapter config")
        base = adapter.get("base_model_name_or_path")
        if not base or not Path(base).is_absolute() or not Path(base).is_dir():
            raise ModelFolderError(
                f"adapter {folder} names base model {base!r}, which is not a local folder", "path"
            )
        if not any((folder / f).exists() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ModelFolderError(
                f"adapter {folder} has no adapter weights (adapter_model.safetensors)", "path"
            )
        base_info = validate_model_folder(base)
        has_tok = any((folder / f).exists() for f in TOKENIZER_FILES)
        return {
            "is_adapter": True,
            "model_type": base_info["model_type"],
            "base_path": str(base),
            "tokenizer": _check_tokenizer(folder) if has_tok else base_info["tokenizer"],
        }
    if not config_path.exists():
        raise ModelFolderError(f"{folder} is not a Hugging Face model folder (no config.json)", "path")
    config = _read_json(config_path, "model config")
    if not config.get("model_type"):
        raise ModelFolderError(f"{config_path} has no model_type; is this a transformers model?", "path")
    if not any((folder / f).exists() for f in WEIGHT_FILES):
        raise ModelFolderError(f"{folder} has no weights ({', '.join(WEIGHT_FILES[:2])})", "path")
    return {"is_adapter": False, "model_type": config["model_type"], "tokenizer": _check_tokenizer(folder)}


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,199}$")


def register_model(
    name: str,
    path: str | os.PathLike,
    *,
    parent: ModelVersion | None = None,
    project: Project | None = None,
    description: str = "",
    created_by=None,
    training_run: TrainingRun | None = None,
    round: int = 0,  # noqa: A002 - the model field's name
    metrics: dict | None = None,
    replace: bool = False,
) -> ModelVersion:
    """Validate a local model folder and register it as ``ModelVersion`` ``name``.

    ``replace`` updates an existing version of that name (used by ``build_default_model`` and
    by a training task that is re-run after a crash); otherwise a taken name is an error.
    """
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise TrainingError("a model name is 1-200 letters, digits, '.', '_', '+' or '-'", "name")
    folder = Path(path).expanduser()
    info = validate_model_folder(folder)
    existing = ModelVersion.objects.filter(name=name).first()
    if existing and not replace:
        raise TrainingError(f"a model named {name!r} is already registered", "name")
    if parent is None and info["is_adapter"]:
        parent = ModelVersion.objects.filter(path=info["base_path"]).first()
    values = dict(
        path=str(folder.resolve()),
        parent=parent,
        is_adapter=info["is_adapter"],
        project=project,
        description=description,
        training_run=training_run,
        round=round,
        metrics={**(metrics or {}), "model_type": info["model_type"]},
    )
    if existing:
        for key, value in values.items():
            setattr(existing, key, value)
        existing.save()
        return existing
    return ModelVersion.objects.create(name=name, created_by=created_by, **values)


def model_roots() -> list[Path]:
    """The folders (resolved) that models registered from the web UI or the API must lie in:
    ``settings.PREFLOOP_MODEL_ROOTS`` (by default ``[PREFLOOP_MODELS_DIR]``)."""
    return [Path(root).expanduser().resolve() for root in settings.PREFLOOP_MODEL_ROOTS]


def check_model_root(path: str | os.PathLike) -> None:
    """Raise :class:`TrainingError` (field ``path``) unless ``path`` lies inside one of
    :func:`model_roots` once resolved, so neither ``..`` nor a symlink leads out of them. For an
    adapter folder, its base model must lie inside them too, or be a registered model already.
    Nothing outside the roots is read."""
    roots = model_roots()
    allowed = ", ".join(str(root) for root in roots) or "none (PREFLOOP_MODEL_ROOTS is empty)"

    def resolve(folder: Path) -> Path:
        try:
            return folder.resolve()
        except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
            raise ModelFolderError(f"{folder} cannot be resolved: {exc}", "path") from exc

    def inside(folder: Path) -> bool:
        return any(folder.is_relative_to(root) for root in roots)

    if not str(path).strip():
        raise ModelFolderError("give the path of a local model folder", "path")
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        raise ModelFolderError(f"{path} is not an absolute path", "path")
    resolved = resolve(folder)
    if not inside(resolved):
        raise TrainingError(
            f"{folder} is outside the folders models may be registered from: {allowed} "
            f"(PREFLOOP_MODEL_ROOTS); a superuser, or manage.py register_model, can register it",
            "path",
        )
    adapter = resolved / "adapter_config.json"
    if adapter.is_file() and not (resolved / "config.json").exists():
        base = _read_json(adapter, "adapter config").get("base_model_name_or_path")
        if isinstance(base, str) and Path(base).is_absolute():
            base_path = resolve(Path(base))
            if not inside(base_path) and not ModelVersion.objects.filter(path=str(base_path)).exists():
                raise TrainingError(
                    f"adapter {folder} is on base model {base}, which is neither registered nor "
                    f"inside the folders models may be registered from: {allowed}",
                    "path",
                )


def register_model_for(user, name: str, path: str | os.PathLike, **options) -> ModelVersion:
    """:func:`register_model` on behalf of a user of the web UI or the API: unless ``user`` is a
    superuser, the folder must lie inside :func:`model_roots` (:func:`check_model_root`). The
    ``manage.py register_model`` command (shell access) calls ``register_model`` directly."""
    if not user.is_superuser:
        check_model_root(path)
    return register_model(name, path, created_by=user, **options)


# =============================================================================================
# Exports: the rows a run trains on
# =============================================================================================


#: Labels of export rows that say which response is better (ties / both-bad are not pairs).
DECIDED_LABELS = {"preference", None}


def _read_export_file(export: Export) -> list[dict]:
    """Rows of the export's pairwise file: ``preferences.jsonl`` (TRL format), else the Parquet
    file (via pyarrow; neither needs torch)."""
    from evaluation.export.folder import FORMAT_FILES

    folder = Path(export.path) if export.path else None
    if folder is None or not folder.is_dir():
        raise TrainingError(
            f"export {export.pk} has no folder on this machine ({export.path or 'not built'})", "export"
        )
    jsonl = folder / FORMAT_FILES["jsonl"]
    parquet = folder / FORMAT_FILES["parquet"]
    if jsonl.exists():
        rows = []
        with open(jsonl, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TrainingError(f"{jsonl}:{line_no}: not valid JSON ({exc})", "export") from exc
        return rows
    if parquet.exists():
        import pyarrow.parquet as pq

        return pq.read_table(parquet).to_pylist()
    raise TrainingError(
        f"export {export.pk} has neither {FORMAT_FILES['jsonl']} nor {FORMAT_FILES['parquet']}; "
        f"build an export with the jsonl format",
        "export",
    )


def _empty(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (
            isinstance(value, list)
            and not any(str(m.get("content", "")).strip() for m in value if isinstance(m, dict))
        )
    )


def export_rows(
    export: Export, *, include_ties: bool = False, dropped: dict | None = None
) -> tuple[list[dict], list[dict]]:
    """The export's preference rows as ``(train, test)`` lists of TRL-format dicts (``prompt``,
    ``chosen``, ``rejected``, ``weight``, ``p_chosen``, ``split``, ...), split by the export's own
    by-prompt ``split`` column.

    Left out: tie / both-bad rows unless ``include_ties`` (they only mean something with soft
    labels, where their ``p_chosen`` is 0.5), and rows with an empty prompt or response (real
    data has them, e.g. HH-RLHF; there is nothing to train on). ``dropped``, when given, receives
    the counts ``{"ties": n, "empty": m}``.
    """
    rows = _read_export_file(export)
    counts = {"ties": 0, "empty": 0}
    kept = []
    for r in rows:
        if not include_ties and r.get("label") not in DECIDED_LABELS:
            counts["ties"] += 1
        elif any(_empty(r.get(k)) for k in ("prompt", "chosen", "rejected")):
            counts["empty"] += 1
        else:
            kept.append(r)
    if dropped is not None:
        dropped.update(counts)
    train = [r for r in kept if r.get("split", "train") != "test"]
    test = [r for r in kept if r.get("split") == "test"]
    return train, test


def run_rows(run: TrainingRun, dropped: dict | None = None) -> tuple[list[dict], list[dict]]:
    """``export_rows`` with the run's settings (ties kept only with ``use_soft_labels``)."""
    soft = bool((run.hyperparameters or {}).get("use_soft_labels", False))
    return export_rows(run.export, include_ties=soft, dropped=dropped)


#: Options of the export built when a run is launched without one: JSONL only (what training
#: reads), the default Dawid-Skene aggregation, a 10 % by-prompt test split.
FRESH_EXPORT_OPTIONS = {"formats": ["jsonl"], "test_fraction": 0.1}


def build_fresh_export(project: Project, created_by=None, params: dict | None = None) -> Export:
    """Create and build (synchronously, in this process) an export of ``project`` with the
    default calibrated settings; raises ``TrainingError`` (and leaves no export behind) when it
    cannot be built, e.g. when no comparison has a judgment yet."""
    from evaluation.export.services import build_export, create_export

    options = {**FRESH_EXPORT_OPTIONS, **(params or {})}
    try:
        export = create_export(project, created_by, options, name="fresh export for training", enqueue=False)
    except ValueError as exc:  # ExportError: bad options or filters that leave nothing
        raise TrainingError(f"could not build a fresh export: {exc}", "export") from exc
    try:
        build_export(export)
    except Exception as exc:  # noqa: BLE001 - any build failure becomes a form error
        discard_export(export)
        raise TrainingError(f"could not build a fresh export: {exc}", "export") from exc
    export.refresh_from_db()
    return export


# =============================================================================================
# Launching, cancelling and recovering runs
# =============================================================================================


def min_pairs(hyperparameters: dict) -> int:
    return int(hyperparameters.get("min_pairs", train_config_defaults()["min_pairs"]))


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return ""


def check_rows(train: list[dict], test: list[dict], hyperparameters: dict) -> None:
    """The checks on the data that need no tokenizer: enough pairs, prompts that can fit."""
    cfg = train_config_defaults()
    cfg.update(hyperparameters)
    need = min_pairs(hyperparameters)
    n_eval = 0
    if not test and cfg["eval_fraction"] > 0 and len(train) >= 2:
        n_eval = max(1, int(round(len(train) * cfg["eval_fraction"])))
    if len(train) - n_eval < need:
        held = f" ({n_eval} held out for evaluation)" if n_eval else ""
        raise TrainingError(
            f"the export has {len(train)} training pairs{held}; at least {need} are needed "
            f"(min_pairs={need})",
            "export",
        )
    if cfg.get("max_prompt_length") is None:
        limit = int(cfg["max_length"]) * MAX_CHARS_PER_TOKEN
        for i, row in enumerate(train + test):
            n_chars = len(_prompt_text(row.get("prompt")))
            if n_chars > limit:
                raise TrainingError(
                    f"pair {i} has a prompt of {n_chars} characters, far more than max_length="
                    f"{cfg['max_length']} tokens allows; raise max_length or set max_prompt_length "
                    f"(longer prompts then keep their last tokens)",
                    "hyperparameters",
                )


def runs_dir() -> Path:
    return Path(settings.PREFLOOP_RUNS_DIR)


def launch_run(
    project: Project,
    *,
    base_model: ModelVersion,
    recipe: str = Recipe.SFT_DPO,
    export: Export | None = None,
    hyperparameters: dict | None = None,
    created_by=None,
    export_params: dict | None = None,
    send: bool = True,
) -> TrainingRun:
    """Validate everything that can be checked without torch, create the run and queue it.

    ``export=None`` builds a fresh export of the project first (synchronously). Raises
    ``TrainingError`` (nothing created) on: unknown or invalid hyperparameters, a base model
    whose folder is missing or unusable, an export of another project or not built, an export
    with fewer pairs than ``min_pairs``, prompts far longer than ``max_length``.
    """
    hp = validate_hyperparameters(hyperparameters, recipe)
    if base_model is None:
        raise TrainingError("choose a base model", "base_model")
    validate_model_folder(base_model.path)
    fresh = export is None
    if export is not None:
        if export.project_id != project.pk:
            raise TrainingError(f"export {export.pk} belongs to another project", "export")
        if export.status != ExportStatus.SUCCEEDED:
            raise TrainingError(
                f"export {export.pk} is {export.status}, not built; wait for it or pick another", "export"
            )
    else:
        export = build_fresh_export(project, created_by, export_params)
    try:
        train, test = export_rows(export, include_ties=bool(hp.get("use_soft_labels")))
        check_rows(train, test, hp)
    except TrainingError:
        if fresh:
            discard_export(export)
        raise
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project,
            export=export,
            recipe=recipe,
            base_model=base_model,
            hyperparameters=hp,
            created_by=created_by,
            status=RunStatus.QUEUED,
            logs=_stamp(
                f"queued: {recipe} on export {export.pk} ({len(train)} train / {len(test)} test pairs), "
                f"base {base_model.name}"
            ),
        )
        run.out_dir = str((runs_dir() / f"run-{run.pk:05d}").resolve())
        run.save(update_fields=["out_dir"])
        if send:
            transaction.on_commit(lambda: send_run(run.pk))
    return run


def discard_export(export: Export) -> None:
    """Delete an export made for a launch that was refused (its files are read-only)."""
    if export.path and Path(export.path).is_dir():
        for root, dirs, files in os.walk(export.path):
            os.chmod(root, 0o755)
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755)
        shutil.rmtree(export.path, ignore_errors=True)
    export.delete()


def send_run(run_id: int) -> None:
    """Queue the Celery task of run ``run_id`` on the gpu queue and remember its task id."""
    from .tasks import run_training

    result = run_training.apply_async((run_id,))
    TrainingRun.objects.filter(pk=run_id).update(celery_task_id=result.id or "")


def cancel_run(run: TrainingRun, user=None) -> TrainingRun:
    """Ask the run to stop. A queued run is cancelled at once; a running one stops before its
    next step and keeps its last checkpoint (the worker saves one when it sees the flag)."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            raise TrainingError(f"run {run.pk} has already {run.status}")
        who = f" by {user.get_username()}" if user is not None and user.is_authenticated else ""
        run.cancel_requested = True
        fields = ["cancel_requested", "logs", "updated_at"]
        if run.status == RunStatus.QUEUED and run.attempts == 0:
            run.status = RunStatus.CANCELLED
            run.finished_at = timezone.now()
            run.eta_seconds = None
            fields += ["status", "finished_at", "eta_seconds"]
            run.logs = append_log(run.logs, f"cancelled before it started{who}")
        else:
            run.logs = append_log(run.logs, f"cancel requested{who}; stopping before the next step")
        run.save(update_fields=fields)
    return run


def _stamp(message: str) -> str:
    return f"[{timezone.now().strftime('%Y-%m-%d %H:%M:%S')}] {message}"


def log_expression(message: str):
    """An UPDATE expression appending a stamped line to ``logs`` in the database itself (one
    atomic statement, so the worker and the web process never overwrite each other's lines),
    keeping the last ``LOG_MAX_CHARS`` characters."""
    from django.db.models import F, Value
    from django.db.models.functions import Concat, Right

    line = "\n" + _stamp(message)
    return Right(Concat(F("logs"), Value(line)), LOG_MAX_CHARS)


def append_run_log(run_id: int, message: str, **fields) -> None:
    """Append a line to run ``run_id``'s logs (and set ``fields``) in one UPDATE."""
    TrainingRun.objects.filter(pk=run_id).update(
        logs=log_expression(message), updated_at=timezone.now(), **fields
    )


def append_log(logs: str, message: str) -> str:
    text = (logs + "\n" if logs else "") + _stamp(message)
    if len(text) > LOG_MAX_CHARS:
        text = text[-LOG_MAX_CHARS:]
        text = text[text.find("\n") + 1 :]
    return text


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_dead(run: TrainingRun, now=None) -> bool:
    """The run's worker is gone: its heartbeat is stale, or it ran on this host under a pid that
    no longer exists."""
    now = now or timezone.now()
    if run.heartbeat_at is None or run.heartbeat_at < now - timedelta(seconds=heartbeat_stale_s()):
        return True
    host, _, pid = (run.worker or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    return False


def heartbeat_stale_s() -> int:
    return int(getattr(settings, "PREFLOOP_RUN_HEARTBEAT_STALE_S", DEFAULT_HEARTBEAT_STALE_S))


def claim_run(run_id: int, task_id: str = "") -> TrainingRun | None:
    """Mark the run as running on this worker, or return None when it must not run here:
    missing, finished, cancelled while queued, or running on another live worker."""
    now = timezone.now()
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.is_finished:
            return None
        if run.cancel_requested and run.status == RunStatus.QUEUED and run.attempts == 0:
            run.status = RunStatus.CANCELLED
            run.finished_at = now
            run.save(update_fields=["status", "finished_at", "updated_at"])
            return None
        if run.status == RunStatus.RUNNING and not owner_is_dead(run, now):
            return None
        resumed = run.attempts > 0
        run.status = RunStatus.RUNNING
        run.worker = worker_id()
        run.heartbeat_at = now
        run.attempts += 1
        run.started_at = run.started_at or now
        if task_id:
            run.celery_task_id = task_id
        run.logs = append_log(
            run.logs,
            f"{'restarted' if resumed else 'started'} on worker {run.worker} (attempt {run.attempts})",
        )
        run.save(
            update_fields=[
                "status",
                "worker",
                "heartbeat_at",
                "attempts",
                "started_at",
                "celery_task_id",
                "logs",
                "updated_at",
            ]
        )
    return run


def resume_stale_runs(*, send: bool = True) -> list[int]:
    """Re-queue runs left 'running' by a worker that died (stale heartbeat, or a dead pid on
    this host). Called when a worker starts (Celery's ``worker_ready`` signal) and by
    ``manage.py train --resume-stale``. The task then resumes from the last checkpoint.

    Brokers without redelivery of unacknowledged messages after a crash (the embedded
    file-system broker loses a message its worker had taken) need this; with Redis or RabbitMQ
    the redelivered message and this re-queue meet in ``claim_run``, so the run still runs once.
    """
    now = timezone.now()
    requeued = []
    for run in TrainingRun.objects.filter(status=RunStatus.RUNNING).only("pk", "worker", "heartbeat_at"):
        if not owner_is_dead(run, now):
            continue
        with transaction.atomic():
            fresh = TrainingRun.objects.select_for_update().get(pk=run.pk)
            if fresh.status != RunStatus.RUNNING or not owner_is_dead(fresh, now):
                continue
            fresh.status = RunStatus.QUEUED
            fresh.logs = append_log(
                fresh.logs, f"worker {fresh.worker} was lost; re-queued to resume from the last checkpoint"
            )
            fresh.save(update_fields=["status", "logs", "updated_at"])
        requeued.append(run.pk)
        if send:
            send_run(run.pk)
    return requeued


def output_model_name(run: TrainingRun) -> str:
    base = re.sub(r"[^A-Za-z0-9._+\-]", "-", run.base_model.name)[:120]
    return f"{base}.{run.recipe}.run{run.pk}"


def metric_series(run: TrainingRun, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` of the run's metrics rows (missing values skipped)."""
    out: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for step, data in TrainingMetric.objects.filter(run=run).order_by("step").values_list("step", "data"):
        for k in keys:
            v = data.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                out[k].append((step, float(v)))
    return out


# =============================================================================================
# Samples and the next round
# =============================================================================================


def request_sample(
    model_version: ModelVersion,
    prompt: str,
    *,
    run: TrainingRun | None = None,
    user=None,
    max_new_tokens: int = 48,
    send: bool = True,
) -> GenerationSample:
    """Queue a generation from ``model_version`` (answered by a worker task, polled by the page)."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise TrainingError("type a prompt", "prompt")
    if len(prompt) > 4000:
        raise TrainingError("the prompt is longer than 4000 characters", "prompt")
    if not 1 <= int(max_new_tokens) <= 512:
        raise TrainingError("max_new_tokens must be between 1 and 512", "max_new_tokens")
    sample = GenerationSample.objects.create(
        model_version=model_version,
        run=run,
        prompt=prompt,
        max_new_tokens=int(max_new_tokens),
        created_by=user,
    )
    if send:
        from .tasks import generate_sample

        transaction.on_commit(lambda: generate_sample.delay(sample.pk))
    return sample


def queue_sample_round(
    project: Project,
    model_version: ModelVersion,
    *,
    n_prompts: int = 20,
    compare_to: ModelVersion | None | str = "parent",
    run: TrainingRun | None = None,
    user=None,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
    send: bool = True,
) -> SamplingJob:
    """Queue ``sample_round``: new responses from ``model_version`` for ``n_prompts`` prompts of
    ``project`` become round ``project.current_round + 1`` comparisons. ``compare_to="parent"``
    pits the new model against the version it was trained from (two samples of the new model
    when it has none); ``None`` always takes two samples."""
    if not 1 <= int(n_prompts) <= 10_000:
        raise TrainingError("n_prompts must be between 1 and 10000", "n_prompts")
    if not Prompt.objects.filter(project=project).exists():
        raise TrainingError("the project has no prompts to sample from", "n_prompts")
    if compare_to == "parent":
        compare_to = model_version.parent
    if compare_to is not None and compare_to.pk == model_version.pk:
        compare_to = None
    job = SamplingJob.objects.create(
        project=project,
        model_version=model_version,
        compare_to=compare_to,
        run=run,
        n_prompts=int(n_prompts),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        seed=int(seed),
        round=project.current_round + 1,
        created_by=user,
    )
    if send:
        from .tasks import sample_round

        transaction.on_commit(lambda: sample_round.delay(job.pk))
    return job


def _choose_prompts(project: Project, n: int, seed: int) -> list[Prompt]:
    ids = list(Prompt.objects.filter(project=project).order_by("pk").values_list("pk", flat=True))
    rng = random.Random(seed)
    rng.shuffle(ids)
    chosen = ids[:n]
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def sample_next_round(
    source: TrainingRun | ModelVersion,
    project: Project | None = None,
    n_prompts: int = 20,
    *,
    generate=None,
    **options,
) -> SamplingJob:
    """Sample the next round now, in this process (a worker, a shell or a command; it loads the
    models): new responses from ``source`` (a succeeded run's output model, or a model version)
    for ``n_prompts`` prompts of ``project`` become round ``current_round + 1`` comparisons.
    ``options`` are :func:`queue_sample_round`'s. Returns the finished ``SamplingJob``."""
    run = source if isinstance(source, TrainingRun) else None
    version = run.output_model if run is not None else source
    if version is None:
        raise TrainingError("the run has no output model to sample from")
    project = project or (run.project if run is not None else version.project)
    if project is None:
        raise TrainingError("name the project to sample into")
    job = queue_sample_round(project, version, n_prompts=n_prompts, run=run, send=False, **options)
    try:
        created = run_sampling_job(job, generate=generate)
    except Exception as exc:
        SamplingJob.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
    SamplingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED, n_created=created, progress=1.0, finished_at=timezone.now()
    )
    job.refresh_from_db()
    return job


def run_sampling_job(job: SamplingJob, generate=None, progress=None) -> int:
    """Generate the job's responses and import them as the next round's comparisons.

    Runs in the worker (``training.tasks.sample_round``): ``generate(model_path, prompts,
    num_return_sequences, max_new_tokens, temperature, seed)`` returns a list (per prompt) of
    lists of strings; by default ``training.tasks.generate_texts`` (torch). Responses get
    ``model_name`` = the version's name and ``round`` = ``job.round``; comparisons are written by
    ``annotate.imports.import_comparisons`` (validated, de-duplicated, transactional). Pairs whose
    two responses are identical or empty are skipped. Returns the comparisons created; the
    project's ``current_round`` moves to ``job.round``.
    """
    from annotate.imports import import_comparisons

    if generate is None:
        from .tasks import generate_texts as generate

    project = job.project
    prompts = _choose_prompts(project, job.n_prompts, job.seed)
    inputs = [p.messages if p.messages else p.text for p in prompts]
    new_model = job.model_version
    if job.compare_to is not None:
        outs_a = generate(new_model.path, inputs, 1, job.max_new_tokens, job.temperature, job.seed)
        if progress:
            progress(0.5)
        outs_b = generate(job.compare_to.path, inputs, 1, job.max_new_tokens, job.temperature, job.seed)
        pairs = [(a[0], b[0]) for a, b in zip(outs_a, outs_b)]
        model_b = job.compare_to.name
    else:
        outs = generate(new_model.path, inputs, 2, job.max_new_tokens, job.temperature, job.seed)
        pairs = [(o[0], o[1]) for o in outs]
        model_b = new_model.name
    if progress:
        progress(0.9)
    lines = []
    for prompt, (a, b) in zip(prompts, pairs):
        a, b = a.strip(), b.strip()
        if not a or not b or a == b:
            continue
        lines.append(
            json.dumps(
                {
                    "prompt": prompt.messages if prompt.messages else prompt.text,
                    "response_a": a,
                    "response_b": b,
                    "model_a": new_model.name,
                    "model_b": model_b,
                    "metadata": {"sampling_job": job.pk, "source": "training.sample_round"},
                },
                ensure_ascii=False,
            )
        )
    if not lines:
        raise TrainingError("every sampled pair was empty or identical; nothing to annotate")
    data = io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))
    with transaction.atomic():
        result = import_comparisons(
            project, data, filename="sample_round.jsonl", fmt="jsonl", round=job.round
        )
        Project.objects.filter(pk=project.pk, current_round__lt=job.round).update(current_round=job.round)
    return result.created
