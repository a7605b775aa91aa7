"""Writing an export's rows, streamed: one writer per format (JSONL, CSV, Parquet and the
``datasets`` folder through Arrow IPC streams), the pairs read back :data:`CHUNK` at a time,
and the judgments file with pseudonymous annotators.

Pseudonyms: ``ann-`` + 16 hex digits of ``HMAC-SHA256(key, user id)``; the key is the
export's secret salt, or (``stable_pseudonyms``) derived from ``SECRET_KEY`` and the project.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection

from annotate.models import Comparison, Judgment

from ..models import Export
from ..stats.judgments import TIE, B
from .folder import FORMAT_FILES, JSONL_SPLIT_FILES, JUDGMENT_FIELDS, PAIR_FIELDS, pair_fields
from .options import ExportError, ExportOptions
from .progress import Progress
from .selection import Selection

#: Rows of texts fetched and written per batch.
CHUNK = 2000
PSEUDONYM_PREFIX = "ann-"


def pseudonym_key(export: Export, opts: ExportOptions) -> bytes:
    if opts.stable_pseudonyms:
        return hmac.new(
            settings.SECRET_KEY.encode(),
            f"prefloop/export-pseudonyms/project/{export.project_id}".encode(),
            hashlib.sha256,
        ).digest()
    if not export.salt:
        raise ExportError("this export has no pseudonym key")
    return bytes.fromhex(export.salt)


def pseudonym(key: bytes, user_id: int) -> str:
    return PSEUDONYM_PREFIX + hmac.new(key, f"user:{int(user_id)}".encode(), hashlib.sha256).hexdigest()[:16]


def _messages(value) -> list[dict[str, str]] | None:
    """Prompt.messages normalized to [{role, content}] strings (None when not a chat)."""
    if not value or not isinstance(value, list):
        return None
    out = []
    for m in value:
        if not isinstance(m, dict):
            continue
        content = m.get("content", "")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        out.append({"role": str(m.get("role", "user")), "content": content})
    return out or None


def pair_schema(conversational: bool, with_tie: bool = False):
    """The Arrow schema of the pairwise files (with the ``tie`` column after ``label`` when the
    export includes ties)."""
    import pyarrow as pa

    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = msgs if conversational else pa.string()
    types = {
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "label": pa.string(),
        "weight": pa.float64(),
        "confidence": pa.float64(),
        "p_chosen": pa.float64(),
        "p_rejected": pa.float64(),
        "p_tie": pa.float64(),
        "n_judgments": pa.int32(),
        "agreement": pa.float64(),
        "pool_disagreement": pa.float64(),
        "comparison_id": pa.int64(),
        "prompt_id": pa.int64(),
        "round": pa.int32(),
        "model_chosen": pa.string(),
        "model_rejected": pa.string(),
        "chosen_response": pa.string(),
        "gold": pa.bool_(),
        "split": pa.string(),
    }
    assert list(types) == list(PAIR_FIELDS)
    types["tie"] = pa.bool_()
    return pa.schema([(name, types[name]) for name in pair_fields(with_tie)])


def _r(x: np.ndarray, digits: int = 6) -> list:
    return np.round(x.astype(np.float64), digits).tolist()


class PairChunk:
    """Columns of one chunk of pairs (lists), plus the plain-text versions CSV needs."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {}
        self.plain_prompt: list[str] = []
        self.plain_chosen: list[str] = []
        self.plain_rejected: list[str] = []


def rows_by_id(base, ids: np.ndarray, fields: tuple[str, ...]) -> dict[int, tuple]:
    """``{id: values_list row}`` for the sorted ``ids`` of ``base`` (a queryset of one project).

    Dense ids (the usual case: a project's rows were created together) are read as one
    ``pk`` range scan, skipping the few rows not asked for; sparse ids with ``pk__in`` in
    pieces of at most 900 (below SQLite's smallest bound-parameter limit).
    """
    if ids.size == 0:
        return {}
    lo, hi = int(ids[0]), int(ids[-1])
    if hi - lo + 1 <= 2 * ids.size:
        parts = [base.filter(pk__gte=lo, pk__lte=hi)]
    else:
        step = 900 if connection.vendor == "sqlite" else 10_000
        parts = [base.filter(pk__in=ids[i : i + step].tolist()) for i in range(0, ids.size, step)]
    wanted = set(ids.tolist())
    out = {}
    for qs in parts:
        for row in qs.order_by("pk").values_list("pk", *fields).iterator(chunk_size=CHUNK):
            if row[0] in wanted:
                out[row[0]] = row
    return out


PAIR_TEXT_FIELDS = (
    "prompt__text",
    "prompt__messages",
    "response_a__text",
    "response_a__model_name",
    "response_b__text",
    "response_b__model_name",
)


def _pair_chunks(sel: Selection, progress: Progress) -> Iterable[PairChunk]:
    """Yield the selected pairs in comparison-id order, :data:`CHUNK` at a time (texts streamed)."""
    t = sel.table
    proba = sel.result.proba
    n_per_item = np.bincount(sel.judgments.item, minlength=t.n_items)
    for start in range(0, sel.n_pairs, CHUNK):
        idx = sel.selected[start : start + CHUNK]
        cids = t.comparison_ids[idx]
        rows = rows_by_id(Comparison.objects.filter(project=sel.project), cids, PAIR_TEXT_FIELDS)
        label = sel.label[idx]
        is_tie = label == TIE
        a_chosen = label != B  # ties: chosen = A by convention
        p_a, p_b, p_tie = proba[idx, 0], proba[idx, 1], proba[idx, 2]
        p_chosen = np.where(is_tie, 0.5, np.where(a_chosen, p_a, p_b))
        p_rejected = np.where(is_tie, 0.5, np.where(a_chosen, p_b, p_a))
        weight = np.where(is_tie, p_tie, p_chosen) * sel.support[idx]
        names = np.where(is_tie, np.where(sel.item_both_bad[idx], "both_bad", "tie"), "preference").tolist()
        dis = sel.pool_disagreement[idx]
        chunk = PairChunk()
        prompts, chosen, rejected, m_chosen, m_rejected = [], [], [], [], []
        for cid, a_first in zip(cids.tolist(), a_chosen.tolist()):
            row = rows.get(cid)
            if row is None:
                raise ExportError(f"comparison {cid} was deleted while the export was being built")
            _, p_text, p_msgs, a_text, a_model, b_text, b_model = row
            c_text, r_text = (a_text, b_text) if a_first else (b_text, a_text)
            m_chosen.append(a_model if a_first else b_model)
            m_rejected.append(b_model if a_first else a_model)
            chunk.plain_prompt.append(p_text)
            chunk.plain_chosen.append(c_text)
            chunk.plain_rejected.append(r_text)
            if sel.conversational:
                msgs = _messages(p_msgs) or [{"role": "user", "content": p_text}]
                prompts.append(msgs)
                chosen.append([{"role": "assistant", "content": c_text}])
                rejected.append([{"role": "assistant", "content": r_text}])
            else:
                prompts.append(p_text)
                chosen.append(c_text)
                rejected.append(r_text)
        chunk.cols = {
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "label": names,
            "tie": is_tie.tolist(),
            "weight": _r(weight),
            "confidence": _r(sel.confidence[idx]),
            "p_chosen": _r(p_chosen),
            "p_rejected": _r(p_rejected),
            "p_tie": _r(p_tie),
            "n_judgments": n_per_item[idx].tolist(),
            "agreement": _r(sel.agreement[idx]),
            "pool_disagreement": [None if math.isnan(v) else v for v in _r(dis)],
            "comparison_id": cids.tolist(),
            "prompt_id": sel.item_prompt[idx].tolist(),
            "round": sel.item_round[idx].tolist(),
            "model_chosen": m_chosen,
            "model_rejected": m_rejected,
            "chosen_response": np.where(a_chosen, "a", "b").tolist(),
            "gold": (t.gold[idx] >= 0).tolist(),
            "split": np.where(sel.item_test[idx], "test", "train").tolist(),
        }
        yield chunk
        progress.advance(len(idx))


class JsonlWriter:
    def __init__(self, path: Path, fields: list[str]) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="\n")
        self.fields = fields
        self.encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode

    def write(self, cols: dict[str, list]) -> None:
        columns = [cols[name] for name in self.fields]
        encode = self.encode
        fields = self.fields
        self.f.write("".join(encode(dict(zip(fields, values))) + "\n" for values in zip(*columns)))

    def close(self) -> None:
        self.f.close()


class SplitJsonlWriter:
    """One JSONL file per split (:data:`JSONL_SPLIT_FILES`), each row routed by its ``split``; a
    split's file is created with its first row, so a split without rows has no file."""

    def __init__(self, folder: Path, fields: list[str]) -> None:
        self.folder, self.fields = folder, fields
        self.writers: dict[str, JsonlWriter] = {}

    def write(self, cols: dict[str, list]) -> None:
        for split, name in JSONL_SPLIT_FILES.items():
            rows = [i for i, s in enumerate(cols["split"]) if s == split]
            if not rows:
                continue
            if split not in self.writers:
                self.writers[split] = JsonlWriter(self.folder / name, self.fields)
            part = cols if len(rows) == len(cols["split"]) else {k: [cols[k][i] for i in rows] for k in self.fields}
            self.writers[split].write(part)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


#: Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A CSV cell a spreadsheet shows as text: a string starting with ``=``, ``+``, ``-``, ``@``,
    tab or carriage return gets a leading ``'`` (OWASP's advice against CSV injection); numbers and
    other strings are written as they are. CSV only: JSONL, Parquet and ``hf/`` keep the exact text."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


class CsvWriter:
    """``preferences.csv``: text cells made safe to open in a spreadsheet (:func:`csv_cell`)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="")
        self.w = csv.writer(self.f)
        self.fields = fields
        self.w.writerow(fields)

    def write(self, cols: dict[str, list]) -> None:
        columns = [cols[name] for name in self.fields]
        self.w.writerows([csv_cell(v) for v in values] for values in zip(*columns))

    def close(self) -> None:
        self.f.close()


class ArrowWriters:
    """The Parquet file and/or the per-split Arrow IPC streams that become the datasets folder."""

    def __init__(self, schema, parquet_path: Path | None, stream_paths: dict[str, Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = schema
        self.parquet = (
            pq.ParquetWriter(str(parquet_path), schema, compression="zstd") if parquet_path else None
        )
        self.streams = {split: (pa.OSFile(str(p), "wb"), None) for split, p in stream_paths.items()}
        self.streams = {
            split: (sink, pa.ipc.new_stream(sink, schema)) for split, (sink, _) in self.streams.items()
        }

    def write(self, cols: dict[str, list]) -> None:
        batch = self.pa.RecordBatch.from_pydict({f.name: cols[f.name] for f in self.schema}, schema=self.schema)
        if self.parquet is not None:
            self.parquet.write_batch(batch)
        if self.streams:
            split = batch.column("split")
            for name, (_, writer) in self.streams.items():
                part = batch.filter(self.pa.compute.equal(split, name))
                if part.num_rows:
                    writer.write_batch(part)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        for sink, writer in self.streams.values():
            writer.close()
            sink.close()


def write_pairs(sel: Selection, folder: Path, progress: Progress) -> dict[str, int]:
    """Write the pairwise formats; returns the number of rows per split."""
    import pyarrow.compute  # noqa: F401  (pa.compute)

    formats = set(sel.opts.formats)
    fields = list(pair_fields(sel.opts.writes_ties))
    jsonl = SplitJsonlWriter(folder, fields) if "jsonl" in formats else None
    csvw = CsvWriter(folder / FORMAT_FILES["csv"], fields) if "csv" in formats else None
    splits = ["train", "test"] if sel.opts.test_fraction > 0 else ["train"]
    stream_paths = {}
    if "hf" in formats:
        tmp = folder / ".arrow"
        tmp.mkdir(exist_ok=True)
        stream_paths = {s: tmp / f"{s}.arrow" for s in splits}
    arrow = None
    if "parquet" in formats or stream_paths:
        parquet_path = folder / FORMAT_FILES["parquet"] if "parquet" in formats else None
        arrow = ArrowWriters(pair_schema(sel.conversational, sel.opts.writes_ties), parquet_path, stream_paths)
    counts = {"train": 0, "test": 0}
    progress.stage("pairs", sel.n_pairs)
    try:
        for chunk in _pair_chunks(sel, progress):
            if jsonl:
                jsonl.write(chunk.cols)
            if csvw:
                plain = dict(
                    chunk.cols,
                    prompt=chunk.plain_prompt,
                    chosen=chunk.plain_chosen,
                    rejected=chunk.plain_rejected,
                )
                csvw.write(plain)
            if arrow:
                arrow.write(chunk.cols)
            n_test = sum(1 for s in chunk.cols["split"] if s == "test")
            counts["test"] += n_test
            counts["train"] += len(chunk.cols["split"]) - n_test
    finally:
        for w in (jsonl, csvw, arrow):
            if w is not None:
                w.close()
    return counts


def write_hf(sel: Selection, folder: Path, progress: Progress) -> None:
    """Turn the per-split Arrow streams into a ``datasets`` DatasetDict folder (save_to_disk)."""
    import datasets
    from datasets import Dataset, DatasetDict

    progress.stage("hf")
    tmp = folder / ".arrow"
    splits = ["train", "test"] if sel.opts.test_fraction > 0 else ["train"]
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dd = DatasetDict({s: Dataset.from_file(str(tmp / f"{s}.arrow")) for s in splits})
        dd.save_to_disk(str(folder / FORMAT_FILES["hf"]))
        del dd
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    shutil.rmtree(tmp)
    for split in splits:
        _content_fingerprint(folder / FORMAT_FILES["hf"] / split)


def _content_fingerprint(split_dir: Path) -> None:
    """Replace the split's ``state.json`` ``_fingerprint`` with one derived from its data files.

    ``datasets`` fingerprints a dataset read from a file by that file's path, here a temporary
    build folder with a random name, so the same export built twice (a retry) would differ in
    this one value and in its content hash. A hash of the Arrow data is as unique and stable.
    """
    state_path = split_dir / "state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for entry in state.get("_data_files", []):
        with open(split_dir / entry["filename"], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    state["_fingerprint"] = h.hexdigest()[:16]
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)


def write_judgments(sel: Selection, folder: Path, key: bytes, progress: Progress) -> int:
    """One row per aggregated judgment, from the arrays (rationales streamed when included).

    Judgments on gold comparisons are left out unless ``include_gold``. Returns the row count.
    """
    t = sel.table
    n = len(t)
    on_gold = t.gold[t.item] >= 0
    written = 0
    names = [pseudonym(key, int(u)) for u in t.annotator_ids]
    pool_name = {pid: name for pid, name in sel.pool_names.items()}
    choice_of = {0: "a", 1: "b"}
    fields = [f for f in JUDGMENT_FIELDS if f != "rationale"] + (
        ["rationale"] if sel.opts.include_rationales else []
    )
    writer = JsonlWriter(folder / FORMAT_FILES["judgments"], fields)
    progress.stage("judgments", n)
    step = 20000
    try:
        for start in range(0, n, step):
            sl = np.arange(start, min(start + step, n))
            if not sel.opts.include_gold:
                sl = sl[~on_gold[sl]]
            if sl.size == 0:
                progress.advance(min(step, n - start))
                continue
            item, worker = t.item[sl], t.worker[sl]
            label, both_bad, a_left = t.label[sl], t.both_bad[sl], t.a_left[sl]
            known = t.a_left_known[sl]
            choice = [
                "both_bad" if bb else ("tie" if lab == 2 else choice_of[lab])
                for lab, bb in zip(label.tolist(), both_bad.tolist())
            ]
            left_label = np.where(a_left, 0, 1)
            # "": the choice itself (tie / both_bad); None: a side that is not known.
            shown = np.where(
                label == 2, "", np.where(known, np.where(label == left_label, "left", "right"), "?")
            ).tolist()
            choice_shown = [None if s == "?" else (s or c) for s, c in zip(shown, choice)]
            display_order = [
                ("AB" if al else "BA") if k else None for al, k in zip(a_left.tolist(), known.tolist())
            ]
            seconds = t.seconds[sl]
            strength = t.strength[sl]
            cols = {
                "annotator": [names[w] for w in worker.tolist()],
                "pool": [pool_name.get(p) for p in t.pool_of_judgment[sl].tolist()],
                "comparison_id": t.comparison_ids[item].tolist(),
                "prompt_id": sel.item_prompt[item].tolist(),
                "round": sel.item_round[item].tolist(),
                "split": np.where(sel.item_test[item], "test", "train").tolist(),
                "display_order": display_order,
                "choice": choice,
                "choice_shown": choice_shown,
                "strength": [s if s > 0 else None for s in strength.tolist()],
                "seconds": [None if math.isnan(s) else round(s, 3) for s in seconds.tolist()],
                "annotator_weight": _r(sel.worker_weight[worker], 4),
            }
            if sel.opts.include_rationales:
                jids = t.judgment_ids[sl]
                text = rows_by_id(Judgment.objects.filter(project=sel.project), jids, ("rationale",))
                cols["rationale"] = [text[pk][1] if pk in text else "" for pk in jids.tolist()]
            writer.write(cols)
            written += len(choice)
            progress.advance(min(step, n - start))
    finally:
        writer.close()
    return written
