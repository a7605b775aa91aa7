"""The model registry: a local Hugging Face folder checked without torch, registered as a
``ModelVersion``; the folders the web UI and the API may register from.

The GPU worker loads the weights for real before any training
(``training.tiny_model.load_model_and_tokenizer``); this module only reads files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from django.conf import settings
from django.db.models import Q

from annotate.models import Project

from ..models import ModelKind, ModelVersion, TrainingRun
from .errors import ModelFolderError, TrainingError


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
    kind: str | None = None,
) -> ModelVersion:
    """Validate a local model folder and register it as ``ModelVersion`` ``name``.

    ``replace`` updates an existing version of that name (used by ``build_default_model`` and
    by a training task that is re-run after a crash); otherwise a taken name is an error.
    ``kind``: ``ModelKind``; by default a reward model when the folder's ``config.json`` names a
    ``...ForSequenceClassification`` architecture, else a language model.
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
    if kind is None:
        kind = folder_kind(folder)
    values = dict(
        path=str(folder.resolve()),
        kind=kind,
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


def folder_kind(folder: str | os.PathLike) -> str:
    """``ModelKind.REWARD`` for a folder whose ``config.json`` names a sequence-classification
    architecture (a reward model), else ``ModelKind.POLICY``."""
    cfg = Path(folder) / "config.json"
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or [] if cfg.is_file() else []
    except (OSError, ValueError):
        archs = []
    return ModelKind.REWARD if any(str(a).endswith("ForSequenceClassification") for a in archs) else ModelKind.POLICY


def visible_models(user):
    """The model versions ``user`` may see and name: shared base models (no project) and those of
    the projects in which they are an admin or a researcher; every model for a superuser. The
    registry page, ``/api/models/`` and every form or field that names a model read this."""
    from annotate.models import Membership
    from annotate.roles import READ_ROLES

    if user.is_superuser:
        return ModelVersion.objects.all()
    projects = Membership.objects.filter(user=user, role__in=READ_ROLES).values("project_id")
    return ModelVersion.objects.filter(Q(project__isnull=True) | Q(project_id__in=projects))


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


def output_model_name(run: TrainingRun) -> str:
    base = re.sub(r"[^A-Za-z0-9._+\-]", "-", run.base_model.name)[:120]
    return f"{base}.{run.recipe}.run{run.pk}"
