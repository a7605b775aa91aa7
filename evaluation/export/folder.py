"""The export folder: the file each format writes, the documented columns, the content hash
(:func:`folder_hash`), and where folders live.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from django.conf import settings

from ..models import Export

#: The JSONL format writes one file per split, as ``datasets.load_dataset("json",
#: data_files={"train": ..., "test": ...})`` expects (the test file only when the split has rows).
JSONL_SPLIT_FILES = {"train": "preferences-train.jsonl", "test": "preferences-test.jsonl"}
#: The one JSONL file of exports built before the per-split files (all splits; see ``split``).
LEGACY_JSONL = "preferences.jsonl"

#: The file (or folder) each format writes, relative to the export folder (JSONL: its train
#: file; see :data:`JSONL_SPLIT_FILES` and :func:`pair_jsonl_files`).
FORMAT_FILES = {
    "jsonl": JSONL_SPLIT_FILES["train"],
    "parquet": "preferences.parquet",
    "csv": "preferences.csv",
    "judgments": "judgments.jsonl",
    "hf": "hf",
}
CARD_FILE = "README.md"
METADATA_FILE = "metadata.json"

#: Written verbatim into every dataset card and metadata.json.
WEIGHT_RULE = """\
w_j      = annotator j's effective weight (docs/quality.md; evaluation.quality.services.effective_weight):
           0 if an admin excluded them, else the admin's override, else the computed weight
           clip(2*accuracy - 1, 0, 1) * position * length * speed  (evaluation.stats.bias.annotator_weights)
p_chosen = P(chosen better) from the aggregation method (majority: votes weighted by w_j)
support  = mean of w_j over the pair's judgments (in [0, 1])
weight   = p_chosen * support          (tie / both-bad rows: p_tie * support)"""

#: Every column of the pairwise files (JSONL, Parquet, CSV, datasets), documented once.
PAIR_FIELDS: dict[str, str] = {
    "prompt": "The prompt: a string, or a list of {role, content} messages (conversational format).",
    "chosen": "The preferred response: a string, or [{role: assistant, content}] (conversational).",
    "rejected": "The other response, in the same shape as `chosen`.",
    "label": "`preference` for a decided pair; `tie` or `both_bad` for an included tie "
    "(then chosen = response A).",
    "weight": "Training weight in [0, 1]: p_chosen x mean annotator weight on the pair "
    "(see the weight rule).",
    "confidence": "The aggregation's largest posterior probability on this comparison "
    "(what min_confidence filters).",
    "p_chosen": "P(chosen better than rejected) from the aggregation; 0.5 on tie rows.",
    "p_rejected": "P(rejected better) from the aggregation; 0.5 on tie rows.",
    "p_tie": "P(tie or both bad) from the aggregation.",
    "n_judgments": "Number of human judgments aggregated on this comparison.",
    "agreement": "Share of those judgments that agree with the aggregated label.",
    "pool_disagreement": "Largest total-variation distance between two pools' vote shares "
    "(null with < 2 pools).",
    "comparison_id": "prefloop's comparison id (joins with judgments.jsonl).",
    "prompt_id": "prefloop's prompt id (the unit of the train/test split).",
    "round": "The annotation round of the comparison.",
    "model_chosen": "Model that wrote the chosen response.",
    "model_rejected": "Model that wrote the rejected response.",
    "chosen_response": "Which response of the comparison was chosen: `a` or `b`.",
    "gold": "True for calibration comparisons with a known answer (their label is the gold answer).",
    "split": "`train` or `test` (by prompt: no prompt is on both sides).",
}

#: The column added after ``label`` when an export includes ties or both-bad (exports without
#: them keep the columns above, byte for byte).
TIE_FIELD: dict[str, str] = {
    "tie": "True on a tie or both-bad row: no response is preferred, `p_chosen` = `p_rejected` = 0.5, "
    "chosen = response A by convention (soft-label DPO reads it as no preference); false on a "
    "preference row.",
}


def pair_fields(include_ties: bool) -> dict[str, str]:
    """The pairwise files' columns: :data:`PAIR_FIELDS`, with ``tie`` after ``label`` when the
    export includes ties or both-bad."""
    if not include_ties:
        return dict(PAIR_FIELDS)
    out: dict[str, str] = {}
    for name, text in PAIR_FIELDS.items():
        out[name] = text
        if name == "label":
            out.update(TIE_FIELD)
    return out


def pair_jsonl_files(folder: Path) -> list[Path]:
    """The JSONL pair files of a built export folder that exist: the per-split files (train,
    then test), or the single file of an export built before them."""
    folder = Path(folder)
    files = [folder / name for name in JSONL_SPLIT_FILES.values() if (folder / name).exists()]
    if not files and (folder / LEGACY_JSONL).exists():
        files = [folder / LEGACY_JSONL]
    return files


JUDGMENT_FIELDS: dict[str, str] = {
    "annotator": "Pseudonymous annotator id, stable within this export only (unless stable_pseudonyms).",
    "pool": "Name of the annotator pool the judgment was made in (null if none).",
    "comparison_id": "The comparison judged (joins with the pairwise files).",
    "prompt_id": "The comparison's prompt.",
    "round": "The comparison's annotation round.",
    "split": "The split of the comparison's prompt.",
    "display_order": "`AB` if response A was shown on the left, `BA` if on the right; null if the "
    "display order was not recorded (imported votes).",
    "choice": "What the annotator chose, in terms of the responses: `a`, `b`, `tie` or `both_bad`.",
    "choice_shown": "The same in screen terms: `left`, `right`, `tie` or `both_bad` (null for an "
    "`a`/`b` choice whose display order was not recorded).",
    "strength": "1 slightly, 2 clearly, 3 much better (null for ties or when not asked).",
    "seconds": "Seconds the annotator spent on the item (null if unknown).",
    "annotator_weight": "The annotator's weight w_j used by this export (see the weight rule).",
    "rationale": "The annotator's free-text rationale (only when include_rationales is on).",
}


def export_root() -> Path:
    return Path(settings.PREFLOOP_EXPORTS_DIR)


def default_folder(export: Export) -> Path:
    return export_root() / str(export.pk)


def export_files(folder: Path) -> list[Path]:
    """Every file of an export except ``metadata.json``, in the fixed (sorted path) order."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel != METADATA_FILE:
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_hash(folder: Path) -> tuple[str, list[dict]]:
    """The content hash of an export folder and its file list.

    ``sha256`` over one line per file, in sorted relative-path order, ``metadata.json``
    excluded: ``"<relative path>\\t<size in bytes>\\t<sha256 of the file>\\n"``.
    """
    folder = Path(folder)
    outer = hashlib.sha256()
    listing = []
    for p in export_files(folder):
        rel = p.relative_to(folder).as_posix()
        digest = file_sha256(p)
        size = p.stat().st_size
        outer.update(f"{rel}\t{size}\t{digest}\n".encode())
        listing.append({"path": rel, "bytes": size, "sha256": digest})
    return outer.hexdigest(), listing


def verify_folder(folder: Path) -> bool:
    """True when the folder's files still hash to the content hash in its metadata.json."""
    folder = Path(folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    return folder_hash(folder)[0] == meta["content_hash"]


def make_read_only(folder: Path) -> None:
    for p in export_files(folder) + [folder / METADATA_FILE]:
        if p.exists():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
