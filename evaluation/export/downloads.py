"""Downloads of a built export: who may download, which files there are, and the archives
(zip, tar.gz, the ``datasets`` folder as .tar.gz) made on first request and kept.
"""

from __future__ import annotations

import os
import secrets
import tarfile
import zipfile
from pathlib import Path

from annotate.models import Role

from ..models import Export, JobStatus
from .folder import CARD_FILE, FORMAT_FILES, JSONL_SPLIT_FILES, LEGACY_JSONL, METADATA_FILE, export_files, export_root
from .options import FORMATS, ExportError, ExportOptions

#: Download name -> (file in the folder or an archive kind, content type).
DOWNLOADS = {
    "jsonl": (JSONL_SPLIT_FILES["train"], "application/x-ndjson"),
    "jsonl-test": (JSONL_SPLIT_FILES["test"], "application/x-ndjson"),
    "parquet": ("preferences.parquet", "application/vnd.apache.parquet"),
    "csv": ("preferences.csv", "text/csv"),
    "judgments": ("judgments.jsonl", "application/x-ndjson"),
    "hf": ("hf.tar.gz", "application/gzip"),
    "card": ("README.md", "text/markdown"),
    "metadata": ("metadata.json", "application/json"),
    "zip": ("zip", "application/zip"),
    "tar.gz": ("tar.gz", "application/gzip"),
}


def may_download(export: Export, role: str | None) -> bool:
    """Admins and researchers may download; an export with gold answers, admins only."""
    if role == Role.ADMIN:
        return True
    if role != Role.RESEARCHER:
        return False
    return not ExportOptions.from_params(export.params).include_gold


def available_downloads(export: Export) -> list[str]:
    if export.status != JobStatus.SUCCEEDED:
        return []
    formats = ExportOptions.from_params(export.params).formats
    out = []
    for f in FORMATS:
        if f in formats:
            out.append(f)
            if f == "jsonl" and export.path and (Path(export.path) / JSONL_SPLIT_FILES["test"]).exists():
                out.append("jsonl-test")
    return out + ["card", "metadata", "zip", "tar.gz"]


def _archive_dir(export: Export) -> Path:
    return export_root() / "_archives" / str(export.pk)


def _build_archive(export: Export, kind: str, target: Path) -> None:
    folder = Path(export.path)
    base = f"prefloop-export-{export.pk}"
    tmp = target.with_name(target.name + f".{secrets.token_hex(4)}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
                for p in export_files(folder) + [folder / METADATA_FILE]:
                    z.write(p, f"{base}/{p.relative_to(folder).as_posix()}")
        else:
            src = folder / FORMAT_FILES["hf"] if kind == "hf" else folder
            arc = f"{base}-hf" if kind == "hf" else base
            with tarfile.open(tmp, "w:gz") as tar:
                files = export_files(src) + ([] if kind == "hf" else [folder / METADATA_FILE])
                for p in files:
                    tar.add(p, f"{arc}/{p.relative_to(src).as_posix()}", recursive=False)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_file(export: Export, what: str) -> tuple[Path, str, str]:
    """``(path, download filename, content type)`` of one download of a built export.

    ``what``: a format (jsonl: the train split's file, jsonl-test: the test split's; parquet,
    csv, judgments, hf), ``card``, ``metadata``, or an
    archive of the whole folder (``zip``, ``tar.gz``). Archives (and the hf tarball) are made
    on first request and kept. Raises :class:`ExportError` for anything not available.
    """
    if export.status != JobStatus.SUCCEEDED:
        raise ExportError(f"export {export.pk} is not built ({export.status})")
    if what not in DOWNLOADS:
        raise ExportError(f"unknown download {what!r}; one of {', '.join(DOWNLOADS)}")
    if what not in available_downloads(export):
        raise ExportError(
            f"export {export.pk} has no {what} file (formats: {', '.join(available_downloads(export))})"
        )
    name, ctype = DOWNLOADS[what]
    base = f"prefloop-export-{export.pk}"
    folder = Path(export.path)
    if what in ("zip", "tar.gz", "hf"):
        filename = f"{base}-hf.tar.gz" if what == "hf" else f"{base}.{what}"
        target = _archive_dir(export) / filename
        if not target.exists():
            _build_archive(export, what, target)
        return target, filename, ctype
    path = folder / name
    if what == "jsonl" and not path.exists() and (folder / LEGACY_JSONL).exists():
        name, path = LEGACY_JSONL, folder / LEGACY_JSONL  # built before the per-split files
    if not path.exists():
        raise ExportError(f"export {export.pk}: {name} is missing from {folder}")
    return path, f"{base}-{name}", ctype


def read_card(export: Export) -> str:
    if export.status != JobStatus.SUCCEEDED or not export.path:
        return ""
    path = Path(export.path) / CARD_FILE
    return path.read_text(encoding="utf-8") if path.exists() else ""
