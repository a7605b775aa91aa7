"""A large export streams: memory grows with the judgment arrays, never with the texts.

Builds ``N`` comparisons (``PREFLOOP_STREAM_TEST_N``, default 20 000: a 100 000 run takes
minutes on a small machine; ``bench/export.py`` measures 1M) with three judgments each and
about 8.5 kB of text per comparison, plus a small round of ``N/10``, and exports both (JSONL +
Parquet) under ``tracemalloc``. The peak while the texts are written does not grow with the
number of rows, and the peak of the whole build grows by far less than the texts written.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from annotate.models import Membership, Pool, Project, Role
from evaluation.export.progress import Progress
from evaluation.export.folder import pair_jsonl_files
from evaluation.export.services import build_export, create_export

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
User = get_user_model()

N = int(os.environ.get("PREFLOOP_STREAM_TEST_N", "20000"))
ROOT = Path(__file__).resolve().parents[2]
TEXT_SCALE = 4  # ~8.5 kB of text per comparison: holding the texts could not hide among the arrays


def _bench():
    """bench/export.py: its raw-SQL ``populate`` writes the rows ~10x faster than bulk_create."""
    spec = importlib.util.spec_from_file_location("prefloop_bench_export", ROOT / "bench" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TracingProgress(Progress):
    """Records tracemalloc's peak during each stage of the build, and how far it rose above the
    memory held when the stage began (the stage's own working memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.peaks: dict[str, int] = {}
        self.working: dict[str, int] = {}
        self.start = 0

    def stage(self, name: str, total: int = 0) -> None:
        self._record()
        super().stage(name, total)

    def _record(self) -> None:
        current, peak = tracemalloc.get_traced_memory()
        if self.name:
            self.peaks[self.name] = peak
            self.working[self.name] = peak - self.start
        tracemalloc.reset_peak()
        self.start = current

    def close(self) -> None:
        self._record()


def traced_export(project, **options):
    export = create_export(project, None, options, enqueue=False)
    gc.collect()
    progress = TracingProgress()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        export = build_export(export, progress=progress)
    finally:
        tracemalloc.stop()
    peaks = {k: v - base for k, v in progress.peaks.items()}
    return export, peaks, progress.working, time.perf_counter() - t0


def test_large_export_streams_with_flat_memory():
    project = Project.objects.create(name="Big export", license="cc0-1.0")
    pool = Pool.objects.create(project=project, name="crowd")
    annotators = [User.objects.create_user(f"stream-annotator-{i}") for i in range(30)]
    Membership.objects.bulk_create(
        [Membership(project=project, user=u, role=Role.ANNOTATOR, pool=pool) for u in annotators]
    )
    bench = _bench()
    t0 = time.perf_counter()
    small_n = N // 10
    ids = [u.pk for u in annotators]
    bench.populate(project, small_n, 1, ids, pool.pk, text_scale=TEXT_SCALE)
    large_text = bench.populate(project, N, 0, ids, pool.pk, text_scale=TEXT_SCALE)
    build_s = time.perf_counter() - t0

    opts = dict(formats=["jsonl", "parquet"], method="majority", include_ties=True, include_both_bad=True)
    build_export(
        create_export(project, None, dict(opts, rounds=[1]), enqueue=False),
        progress=Progress(),
    )  # warm-up: lazy imports are not the export's memory
    small, small_peaks, small_work, small_s = traced_export(project, rounds=[1], **opts)
    large, large_peaks, large_work, large_s = traced_export(project, **opts)
    # Every comparison is a row, except the undecided ones (all three voters have weight 0).
    def undecided(e):
        return e.stats["removed"].get("undecided", 0)

    assert small.n_rows + undecided(small) == small_n and large.n_rows + undecided(large) == small_n + N

    # Every row made it to both files.
    n_lines = 0
    for path in pair_jsonl_files(Path(large.path)):  # one file per split
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
            n_lines += 1 + sum(1 for _ in f)
    assert (
        n_lines == large.n_rows
        and first["prompt"].startswith("prompt ")
        and len(first["chosen"]) == 1000 * TEXT_SCALE
    )
    import pyarrow.parquet as pq

    assert pq.ParquetFile(Path(large.path) / "preferences.parquet").metadata.num_rows == large.n_rows

    mib = 2**20
    print(
        f"\nstream test: data {build_s:.1f}s; export of {small_n} rows {small_s:.1f}s, of {small_n + N} rows "
        f"{large_s:.1f}s; {large_text / mib:.0f} MiB more text; peak above start per stage (small -> large): "
        + ", ".join(
            f"{k} {small_peaks.get(k, 0) / mib:.1f} -> {v / mib:.1f} MiB" for k, v in large_peaks.items()
        )
    )
    # Writing the texts: one chunk at a time, whatever the number of rows.
    pairs_growth = large_work["pairs"] - small_work["pairs"]
    print(
        f"working memory while writing the texts: {small_work['pairs'] / mib:.1f} -> "
        f"{large_work['pairs'] / mib:.1f} MiB"
    )
    assert pairs_growth < 0.05 * large_text, (pairs_growth, large_text)
    # The whole build: the judgment arrays grow (about a kilobyte per comparison with three judgments,
    # bootstrap included); the texts are never held (they would add over 8.5 kB per comparison).
    growth = max(large_peaks.values()) - max(small_peaks.values())
    print(f"peak growth {growth / mib:.1f} MiB = {growth / N:.0f} B per extra comparison")
    assert growth < 0.25 * large_text and growth / N < 2000, (growth, large_text)
