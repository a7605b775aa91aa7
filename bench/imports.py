"""Import speed: ``annotate.imports.import_comparisons`` against a naive per-line ORM import.

    .venv/bin/python bench/imports.py [--lines 100000] [--naive-lines 1000]

Runs on a fresh SQLite file in a temporary folder (WAL, as the app runs it), or, with
DATABASE_URL set, on a throw-away PostgreSQL database ``bench_prefloop_imports``. Prints lines/s
for the batched import of ``--lines`` synthetic lines (10% gold, two comparisons per prompt),
for re-importing the same file (all duplicates), and for the naive import
(``get_or_create``/``create`` per line, in one transaction) of ``--naive-lines`` lines of the same
kind, and the ratio between the two rates. Each timing shows wall time and this process's CPU
time (SQLite runs in-process), which is steadier on a busy machine.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py would shadow the standard library's queue module for scripts run from here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from bench._django import bench_database  # noqa: E402


def synthetic(n: int, tag: str) -> bytes:
    filler = "The quick brown fox jumps over the lazy dog. "
    out = io.StringIO()
    for i in range(n):
        row = {
            "prompt": f"[{tag}] Question {i // 2}: " + filler * 4,
            "response_a": f"[{tag}] Answer A{i}. " + filler * 10,
            "response_b": f"[{tag}] Answer B{i}. " + filler * 9,
            "model_a": "tiny-sft",
            "model_b": "tiny-dpo",
            "metadata": {"i": i},
        }
        if i % 10 == 0:
            row["gold"] = "a"
        out.write(json.dumps(row) + "\n")
    return out.getvalue().encode()


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (cpu {self.cpu:.2f} s)"


def naive_import(project, data: bytes) -> int:
    """What a first version would do: one ORM call per row, no batching."""
    from django.db import transaction

    from annotate.models import Comparison, GoldAnswer, Prompt, Response, content_hash
    from annotate.imports import pair_hash

    n = 0
    with transaction.atomic():
        for line in data.decode().splitlines():
            row = json.loads(line)
            ph = content_hash(row["prompt"])
            prompt, _ = Prompt.objects.get_or_create(
                project=project, content_hash=ph, defaults={"text": row["prompt"]}
            )
            ra, _ = Response.objects.get_or_create(
                prompt=prompt,
                content_hash=content_hash(row["response_a"]),
                model_name=row["model_a"],
                defaults={"text": row["response_a"]},
            )
            rb, _ = Response.objects.get_or_create(
                prompt=prompt,
                content_hash=content_hash(row["response_b"]),
                model_name=row["model_b"],
                defaults={"text": row["response_b"]},
            )
            key = pair_hash(ph, ra.content_hash, ra.model_name, rb.content_hash, rb.model_name)
            if Comparison.objects.filter(project=project, round=0, pair_hash=key).exists():
                continue
            c = Comparison.objects.create(
                project=project,
                prompt=prompt,
                response_a=ra,
                response_b=rb,
                pair_hash=key,
                metadata=row.get("metadata", {}),
                is_gold="gold" in row,
            )
            if "gold" in row:
                GoldAnswer.objects.create(comparison=c, answer=row["gold"])
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--naive-lines", type=int, default=1_000)
    args = parser.parse_args()

    with bench_database("bench_prefloop_imports") as connection:
        from annotate.imports import import_comparisons
        from annotate.models import Comparison, Project

        version = connection.Database.sqlite_version if connection.vendor == "sqlite" else ""
        print(f"backend: {connection.vendor} {version}".strip() + f", python {sys.version.split()[0]}")

        data = synthetic(args.lines, "fast")
        mb = len(data) / 1e6
        fast = Project.objects.create(name="bench-fast")
        with Timer() as t_fast:
            result = import_comparisons(fast, io.BytesIO(data), filename="bench.jsonl")
        assert result.created == args.lines, result
        print(
            f"batched import: {args.lines:,} lines ({mb:.0f} MB) in {t_fast} = "
            f"{args.lines / t_fast.wall:,.0f} lines/s ({result.prompts_created:,} prompts, "
            f"{result.responses_created:,} responses, {result.gold:,} gold)"
        )

        with Timer() as t_again:
            again = import_comparisons(fast, io.BytesIO(data), filename="bench.jsonl")
        assert again.created == 0 and again.duplicates == args.lines
        print(f"re-import (all duplicates): {t_again} = {args.lines / t_again.wall:,.0f} lines/s")

        sample = synthetic(args.naive_lines, "naive")
        naive = Project.objects.create(name="bench-naive")
        with Timer() as t_naive:
            n = naive_import(naive, sample)
        assert n == args.naive_lines == Comparison.objects.filter(project=naive).count()
        print(
            f"naive per-line ORM import: {args.naive_lines:,} lines in {t_naive} = "
            f"{args.naive_lines / t_naive.wall:,.0f} lines/s"
        )

        small = Project.objects.create(name="bench-fast-small")
        with Timer() as t_small:
            import_comparisons(small, io.BytesIO(sample), filename="bench.jsonl")
        print(
            f"batched import of the same {args.naive_lines:,} lines: {t_small} = "
            f"{args.naive_lines / t_small.wall:,.0f} lines/s"
        )
        rate = lambda n, t: n / t  # noqa: E731
        print(
            "speed-up, batched vs naive (lines/s): "
            f"{rate(args.lines, t_fast.wall) / rate(args.naive_lines, t_naive.wall):.1f}x wall, "
            f"{rate(args.lines, t_fast.cpu) / rate(args.naive_lines, t_naive.cpu):.1f}x cpu "
            f"at {args.lines:,} lines; "
            f"{t_naive.wall / t_small.wall:.1f}x wall, {t_naive.cpu / t_small.cpu:.1f}x cpu "
            f"on the same {args.naive_lines:,} lines"
        )


if __name__ == "__main__":
    main()
