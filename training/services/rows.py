"""The rows a run trains on: a calibrated export's preference pairs, read without torch, filtered
(ties, empty texts) and checked (enough pairs, enough weight to learn from); a fresh export built
at launch when the run names none. Lengths are not refused: a pair longer than ``max_length`` is
truncated by the trainer (the prompt's earliest tokens first, ``training.data.prompt_keep``), as
TRL does, and the run's log says how many were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from annotate.models import Project
from evaluation.models import Export

from ..models import TrainingRun
from ..weighting import WeightStats, weight_stats
from .errors import TrainingError
from .hyperparameters import train_config_defaults

#: Labels of export rows that say which response is better (ties / both-bad are not pairs).
DECIDED_LABELS = {"preference", None}


def _read_export_file(export: Export) -> list[dict]:
    """Rows of the export's pairwise files: the JSONL file of each split (TRL format), else the
    Parquet file (via pyarrow; neither needs torch)."""
    from evaluation.export.folder import FORMAT_FILES, pair_jsonl_files

    folder = Path(export.path) if export.path else None
    if folder is None or not folder.is_dir():
        raise TrainingError(
            f"export {export.pk} has no folder on this machine ({export.path or 'not built'})", "export"
        )
    parquet = folder / FORMAT_FILES["parquet"]
    jsonl_files = pair_jsonl_files(folder)
    if jsonl_files:
        rows = []
        for jsonl in jsonl_files:
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


def export_weight_stats(export: Export) -> WeightStats | None:
    """The weight sum and effective size of a built export's training pairs (ties left out, weights
    used: what a default launch checks), or None when its file cannot be read. Exports are
    immutable, so the numbers are cached by id and content hash."""
    from django.core.cache import cache

    key = f"training:export-weights:{export.pk}:{export.content_hash or export.path}"
    cached = cache.get(key)
    if cached is not None:
        return WeightStats(**cached)
    try:
        train, _ = export_rows(export)
        stats = weight_stats(train)
    except (TrainingError, ValueError, OSError):
        return None
    cache.set(key, dataclasses.asdict(stats), None)
    return stats


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


def discard_export(export: Export) -> None:
    """Delete an export made for a launch that was refused (its files are read-only)."""
    if export.path and Path(export.path).is_dir():
        for root, dirs, files in os.walk(export.path):
            os.chmod(root, 0o755)
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755)
        shutil.rmtree(export.path, ignore_errors=True)
    export.delete()


def min_pairs(hyperparameters: dict) -> int:
    return int(hyperparameters.get("min_pairs", train_config_defaults()["min_pairs"]))


#: Recipes that train on the export's pairs and their weights (``ppo`` takes only its prompts).
WEIGHTED_RECIPES = ("sft", "dpo", "sft+dpo", "rm", "sft+rm+ppo", "sft+dpo+ppo")


def check_weights(train: list[dict], hyperparameters: dict, recipe: str | None = None) -> WeightStats:
    """The training rows' weight sum and effective sample size (``training.weighting``); refuses
    (``TrainingError`` on ``export``) when the effective size is below ``min_pairs``: the run would
    finish "succeeded" having learned (almost) nothing."""
    cfg = train_config_defaults()
    cfg.update(hyperparameters)
    try:
        stats = weight_stats(train, bool(cfg["use_weights"]))
    except ValueError as exc:
        raise TrainingError(f"the export's rows: {exc}", "export") from exc
    need = min_pairs(hyperparameters)
    if stats.weighted and stats.effective_size < need and (recipe is None or recipe in WEIGHTED_RECIPES):
        raise TrainingError(
            f"the export's weights leave an effective sample size of {stats.effective_size:.1f} "
            f"(Kish (sum w)^2 / sum w^2 over {stats.pairs} training pairs, weight sum "
            f"{stats.weight_sum:.3g}), below min_pairs={need}: the run would learn (almost) nothing. "
            f"The weights come from the annotators' effective weights (the weight rule, docs/quality.md): "
            f"excluded annotators and weight overrides of 0 count 0, and low gold accuracy counts little. "
            f"Fix: include the annotators again or raise their weight overrides on the quality page and "
            f"export again; or set use_weights=false to train every pair at weight 1",
            "export",
        )
    return stats


def check_rows(train: list[dict], test: list[dict], hyperparameters: dict, recipe: str | None = None
               ) -> WeightStats:
    """The checks on the data: enough pairs and enough weight on them (``check_weights``, whose
    stats are returned). Long prompts are not refused: the trainer truncates them from the left
    (``training.data.prompt_keep``), so every length fits ``max_length``."""
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
    return check_weights(train, hyperparameters, recipe)
