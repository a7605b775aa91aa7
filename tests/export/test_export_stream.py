"""A large export streams: memory grows with the judgment arrays, never with the texts.

Builds ``N`` comparisons (``PREFLOOP_STREAM_TEST_N``, default 100 000) with ``bulk_create``,
three judgments each, about 2.5 kB of text per comparison, plus a small round of ``N/10``;
exports both (JSONL + Parquet) under ``tracemalloc`` and checks that the peak of the large
export exceeds the small one's by far less than the texts it wrote. The 1M-comparison
measurement (time and peak memory against a naive ``json.dumps`` over a queryset) is
``bench/export.py``.
"""
from __future__ import annotations

import gc
import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from annotate.models import Comparison, Judgment, Membership, Pool, Project, Prompt, Response, Role
from evaluation import exports

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
User = get_user_model()

N = int(os.environ.get("PREFLOOP_STREAM_TEST_N", "100000"))
PER_PROMPT = 5  # comparisons per prompt (10 responses each)
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def _text(kind: str, i: int, size: int) -> str:
    head = f"{kind} {i}: "
    return head + (FILLER * (size // len(FILLER) + 1))[: size - len(head)]


def populate(project: Project, n: int, round_: int, annotators: list, pool: Pool) -> int:
    """``n`` comparisons in ``round_`` with three judgments each; returns the text bytes."""
    text_bytes = 0
    batch = 5000
    base = Comparison.objects.count()
    for start in range(0, n, batch):
        count = min(batch, n - start)
        n_prompts = (count + PER_PROMPT - 1) // PER_PROMPT
        prompts = Prompt.objects.bulk_create([
            Prompt(project=project, text=_text("prompt", base + start + k, 500),
                   content_hash=f"r{round_}-p{start + k}") for k in range(n_prompts)
        ])
        responses = Response.objects.bulk_create([
            Response(prompt=prompts[k // (2 * PER_PROMPT)], text=_text("response", base + start + k, 1000),
                     model_name=f"model-{k % 2}", content_hash=f"r{round_}-r{start + k}")
            for k in range(2 * count)
        ])
        comparisons = Comparison.objects.bulk_create([
            Comparison(project=project, prompt=prompts[k // PER_PROMPT], response_a=responses[2 * k],
                       response_b=responses[2 * k + 1], round=round_, pair_hash=f"r{round_}-c{start + k}",
                       n_judgments=3, slots_taken=3, is_open=False)
            for k in range(count)
        ])
        Judgment.objects.bulk_create([
            Judgment(project=project, comparison=c, annotator=annotators[(k + a) % len(annotators)], pool=pool,
                     a_on_left=(k + a) % 2 == 0, choice="a" if (k * 7 + a) % 5 else "b", seconds=12.0)
            for k, c in enumerate(comparisons) for a in range(3)
        ])
        text_bytes += n_prompts * 500 + 2 * count * 1000
    return text_bytes


def traced_export(project, **options):
    export = exports.create_export(project, None, options, enqueue=False)
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        export = exports.build_export(export, progress=exports.Progress())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return export, peak, time.perf_counter() - t0


def test_large_export_streams_with_flat_memory(settings):
    settings.PREFLOOP_EXPORT_BOOTSTRAP = 100
    project = Project.objects.create(name="Big export", license="cc0-1.0")
    pool = Pool.objects.create(project=project, name="crowd")
    annotators = [User.objects.create_user(f"stream-annotator-{i}") for i in range(30)]
    Membership.objects.bulk_create([
        Membership(project=project, user=u, role=Role.ANNOTATOR, pool=pool) for u in annotators
    ])
    t0 = time.perf_counter()
    small_n = max(N // 10, 1000)
    small_text = populate(project, small_n, 1, annotators, pool)
    large_text = populate(project, N, 0, annotators, pool)
    build_s = time.perf_counter() - t0

    small, small_peak, small_s = traced_export(project, rounds=[1], formats=["jsonl", "parquet"], method="majority")
    large, large_peak, large_s = traced_export(project, formats=["jsonl", "parquet"], method="majority")
    assert small.n_rows == small_n and large.n_rows == small_n + N

    # Every row made it to both files.
    path = Path(large.path) / "preferences.jsonl"
    with open(path, encoding="utf-8") as f:
        n_lines = sum(1 for _ in f)
        f.seek(0)
        first = json.loads(f.readline())
    assert n_lines == small_n + N and first["prompt"].startswith("prompt ") and len(first["chosen"]) == 1000
    import pyarrow.parquet as pq

    assert pq.ParquetFile(Path(large.path) / "preferences.parquet").metadata.num_rows == small_n + N

    growth = large_peak - small_peak
    extra_rows = N
    extra_text = large_text  # the large export wrote these texts on top of the small one's
    print(
        f"\nstream test: build data {build_s:.1f}s; small export {small_n} rows {small_s:.1f}s peak "
        f"{small_peak / 2**20:.1f} MiB; large {small_n + N} rows {large_s:.1f}s peak {large_peak / 2**20:.1f} MiB; "
        f"growth {growth / 2**20:.1f} MiB for {extra_text / 2**20:.0f} MiB more text "
        f"({growth / extra_rows:.0f} B per extra comparison)"
    )
    # Holding the texts would grow the peak by more than the text itself; streaming grows it by the
    # numeric arrays only (a few hundred bytes per comparison with three judgments).
    assert growth < 0.25 * extra_text, (growth, extra_text)
    assert growth / extra_rows < 600
    assert small_text > 0
