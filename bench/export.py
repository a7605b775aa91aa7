"""Export speed and memory: ``evaluation.export`` against a naive ``json.dumps`` over a queryset.

    .venv/bin/python bench/export.py [--n 1000000] [--skip-naive]

Builds ``--n`` comparisons (about 2.5 kB of text each: a 500-character prompt shared by five
comparisons, two 1000-character responses; three judgments each by 30 annotators) plus a
small round of ``n/10``, with raw ``executemany`` inserts, on a fresh SQLite file in a
temporary folder (WAL, as the app runs it), or, with DATABASE_URL set, on a throw-away
PostgreSQL database ``bench_prefloop_export``. Then, each in a fresh child process so that
peak memory (``ru_maxrss``) is its own:

* ``naive``: what a first version would write: iterate the queryset
  (``select_related``, no ``iterator()``), ``json.dumps`` one dict per comparison into a list,
  write the lines; the label is the majority of a per-row vote count annotation. Its process
  gets an address-space limit (``--naive-limit-gb``, 12) so that on a small machine it fails
  with MemoryError rather than waking the OOM killer.
* ``jsonl``, ``parquet``: :func:`evaluation.export.services.build_export` with that format (load and
  aggregate the judgments, weights, split, stream the texts, dataset card with bootstrap
  agreement intervals, content hash).
* ``jsonl (n/10)``: the same on the small round, to show that memory does not grow with the texts.

Prints wall and CPU time (SQLite runs in-process; CPU time is steadier on a shared machine),
rows/s, peak RSS and peak RSS above the process's RSS after imports, the build's stages, and
the ratios against ``naive``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds scripts named like standard modules (bench/queue.py): keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._django import bench_database  # noqa: E402

STAGES = ("select", "pairs", "judgments", "hf", "card")  # build_export's timed stages, in order
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
PER_PROMPT = 5
N_ANNOTATORS = 30


def _text(kind: str, i: int, size: int) -> str:
    head = f"{kind} {i}: "
    return head + (FILLER * (size // len(FILLER) + 1))[: size - len(head)]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- data


def populate(
    project,
    n: int,
    round_: int,
    annotator_ids: list[int],
    pool_id: int,
    batch: int = 10_000,
    text_scale: int = 1,
) -> int:
    """``n`` comparisons in ``round_`` with three judgments each, by raw ``executemany``
    (the ORM's ``bulk_create`` costs ~0.3 ms a row on a small machine); texts ``text_scale``
    times the default sizes. Returns the text bytes."""
    P_SIZE, R_SIZE = 500 * text_scale, 1000 * text_scale
    from django.core.management.color import no_style
    from django.db import connection, transaction
    from django.db.models import Max
    from django.utils import timezone

    from annotate.models import Comparison, Judgment, Prompt, Response

    def insert(cur, model, columns, rows):
        table = connection.ops.quote_name(model._meta.db_table)
        cols = ", ".join(connection.ops.quote_name(model._meta.get_field(c).column) for c in columns)
        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})", rows)

    now = timezone.now()
    ids = {
        m: (m.objects.aggregate(m=Max("pk"))["m"] or 0) + 1 for m in (Prompt, Response, Comparison, Judgment)
    }
    text_bytes = 0
    tag = f"{project.pk}-{round_}"
    for start in range(0, n, batch):
        count = min(batch, n - start)
        n_prompts = (count + PER_PROMPT - 1) // PER_PROMPT
        p0, r0, c0, j0 = ids[Prompt], ids[Response], ids[Comparison], ids[Judgment]
        with transaction.atomic(), connection.cursor() as cur:
            insert(
                cur,
                Prompt,
                ["id", "project", "text", "messages", "content_hash", "created_at"],
                [
                    (p0 + k, project.pk, _text("prompt", p0 + k, P_SIZE), None, f"{tag}-p{p0 + k}", now)
                    for k in range(n_prompts)
                ],
            )
            insert(
                cur,
                Response,
                ["id", "prompt", "text", "model_name", "content_hash", "round", "created_at"],
                [
                    (
                        r0 + k,
                        p0 + k // (2 * PER_PROMPT),
                        _text("response", r0 + k, R_SIZE),
                        f"model-{k % 2}",
                        f"{tag}-r{r0 + k}",
                        round_,
                        now,
                    )
                    for k in range(2 * count)
                ],
            )
            insert(
                cur,
                Comparison,
                [
                    "id",
                    "project",
                    "prompt",
                    "response_a",
                    "response_b",
                    "round",
                    "pair_hash",
                    "metadata",
                    "source_preference",
                    "is_gold",
                    "is_open",
                    "slots_taken",
                    "n_judgments",
                    "created_at",
                ],
                [
                    (
                        c0 + k,
                        project.pk,
                        p0 + k // PER_PROMPT,
                        r0 + 2 * k,
                        r0 + 2 * k + 1,
                        round_,
                        f"{tag}-c{c0 + k}",
                        "{}",
                        "",
                        False,
                        False,
                        3,
                        3,
                        now,
                    )
                    for k in range(count)
                ],
            )
            insert(
                cur,
                Judgment,
                [
                    "id",
                    "project",
                    "comparison",
                    "annotator",
                    "assignment",
                    "pool",
                    "a_on_left",
                    "choice",
                    "strength",
                    "rationale",
                    "seconds",
                    "source",
                    "created_at",
                ],
                [
                    (
                        j0 + 3 * k + a,
                        project.pk,
                        c0 + k,
                        annotator_ids[(k + a) % len(annotator_ids)],
                        None,
                        pool_id,
                        (k + a) % 2 == 0,
                        "a" if (k * 7 + a) % 5 else "b",
                        2,
                        "",
                        12.0,
                        "bench",
                        now,
                    )
                    for k in range(count)
                    for a in range(3)
                ],
            )
        ids[Prompt] += n_prompts
        ids[Response] += 2 * count
        ids[Comparison] += count
        ids[Judgment] += 3 * count
        text_bytes += n_prompts * P_SIZE + 2 * count * R_SIZE
    with connection.cursor() as cur:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Prompt, Response, Comparison, Judgment]):
            cur.execute(sql)
    return text_bytes


def make_project(name: str, n: int, small: int):
    from django.contrib.auth import get_user_model

    from annotate.models import Membership, Pool, Project, Role

    User = get_user_model()
    project = Project.objects.create(name=name, license="cc0-1.0")
    pool = Pool.objects.create(project=project, name="crowd")
    users = [User.objects.create_user(f"{name}-annotator-{i}") for i in range(N_ANNOTATORS)]
    Membership.objects.bulk_create(
        [Membership(project=project, user=u, role=Role.ANNOTATOR, pool=pool) for u in users]
    )
    ids = [u.pk for u in users]
    text = populate(project, small, 1, ids, pool.pk)
    text += populate(project, n, 0, ids, pool.pk)
    return project, text


# --------------------------------------------------------------------------- the measured jobs


def naive_export(project_id: int, out: Path) -> int:
    """A first version: the queryset in memory, one json.dumps per row, majority by vote counts."""
    from django.db.models import Count, Q

    from annotate.models import Comparison

    qs = (
        Comparison.objects.filter(project_id=project_id)
        .select_related("prompt", "response_a", "response_b")
        .annotate(
            votes_a=Count("judgments", filter=Q(judgments__choice="a")),
            votes_b=Count("judgments", filter=Q(judgments__choice="b")),
            votes=Count("judgments"),
        )
        .order_by("pk")
    )
    lines = []
    for c in qs:
        a_wins = c.votes_a >= c.votes_b
        chosen, rejected = (c.response_a, c.response_b) if a_wins else (c.response_b, c.response_a)
        lines.append(
            json.dumps(
                {
                    "prompt": c.prompt.text,
                    "chosen": chosen.text,
                    "rejected": rejected.text,
                    "p_chosen": max(c.votes_a, c.votes_b) / max(c.votes, 1),
                    "n_judgments": c.votes,
                    "comparison_id": c.pk,
                    "round": c.round,
                    "model_chosen": chosen.model_name,
                    "model_rejected": rejected.model_name,
                },
                ensure_ascii=False,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "naive.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def ours_export(project_id: int, out: Path, fmt: str, rounds: list[int]) -> int:
    from annotate.models import Project
    from evaluation.export.progress import Progress
    from evaluation.export.services import build_export, create_export

    project = Project.objects.get(pk=project_id)
    export = create_export(
        project,
        None,
        {"formats": [fmt], "rounds": rounds, "include_ties": True, "include_both_bad": True},
        enqueue=False,
    )
    export = build_export(export, out_dir=out, progress=Progress())
    return export.n_rows, export.stats.get("seconds", {})


def child(args) -> None:
    import django

    django.setup()
    # Import what the export imports, so the baseline RSS holds the libraries, not the work.
    import pyarrow.parquet  # noqa: F401

    import evaluation.export.services  # noqa: F401

    base = rss_bytes()
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(args.out)
    stages = {}
    if args.child == "naive":
        if args.naive_limit_gb:
            # Address-space cap: the naive export fails with MemoryError instead of waking the OOM killer.
            limit = int(args.naive_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            rows = naive_export(args.project, out)
        except MemoryError:
            print(
                json.dumps(
                    {
                        "error": f"MemoryError at the {args.naive_limit_gb:g} GiB address-space limit",
                        "wall": time.perf_counter() - t0,
                        "peak": peak_rss_bytes(),
                        "base": base,
                    }
                )
            )
            return
    else:
        rows, stages = ours_export(
            args.project, out, args.child, [int(r) for r in args.rounds.split(",") if r]
        )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "rows": rows,
                "wall": wall,
                "cpu": cpu,
                "peak": peak_rss_bytes(),
                "base": base,
                "bytes": size,
                "stages": stages,
            }
        )
    )


def run_child(kind: str, project_id: int, out: Path, rounds: str = "", naive_limit_gb: float = 0) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--project",
        str(project_id),
        "--out",
        str(out),
        "--rounds",
        rounds,
        "--naive-limit-gb",
        str(naive_limit_gb),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"child {kind} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--skip-naive", action="store_true", help="Do not run the naive export.")
    parser.add_argument(
        "--naive-limit-gb",
        type=float,
        default=12.0,
        help="Address-space limit of the naive export's process (0: none).",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "prefloop.settings")
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    if args.child:
        child(args)
        return

    with bench_database("bench_prefloop_export", prefix="prefloop-bench-export-") as connection:
        version = connection.Database.sqlite_version if connection.vendor == "sqlite" else ""
        print(
            f"backend: {connection.vendor} {version}".strip() + f", python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )
        small = max(args.n // 10, 1)
        t0 = time.perf_counter()
        project, text = make_project("bench-export", args.n, small)
        print(
            f"data: {args.n:,} + {small:,} comparisons, {3 * (args.n + small):,} judgments, "
            f"{text / 2**20:,.0f} MiB of text, inserted in {time.perf_counter() - t0:.0f} s"
        )
        connection.close()

        out = Path(os.environ["PREFLOOP_DATA_DIR"]) / "out"
        results = {}
        jobs = [("jsonl", "0,1"), ("parquet", "0,1"), ("jsonl (n/10)", "1")]
        if not args.skip_naive:
            jobs.insert(0, ("naive", ""))
        for label, rounds in jobs:
            kind = label.split()[0]
            res = run_child(
                kind,
                project.pk,
                out / label.replace(" ", "_").replace("/", "-"),
                rounds,
                args.naive_limit_gb if kind == "naive" else 0,
            )
            if "error" in res:
                print(
                    f"{label:>13}: failed after {res['wall']:.1f} s: {res['error']} (peak RSS "
                    f"{res['peak'] / 2**20:,.0f} MiB)",
                    flush=True,
                )
                continue
            results[label] = res
            print(
                f"{label:>13}: {res['rows']:>9,} rows in {res['wall']:7.1f} s (cpu {res['cpu']:7.1f} s) = "
                f"{res['rows'] / res['wall']:7,.0f} rows/s; "
                f"peak RSS {res['peak'] / 2**20:7,.0f} MiB "
                f"(+{(res['peak'] - res['base']) / 2**20:6,.0f} MiB over "
                f"{res['base'] / 2**20:,.0f} after imports); output {res['bytes'] / 2**20:,.0f} MiB"
                + (
                    " ["
                    + ", ".join(f"{k} {res['stages'][k]:.1f}s" for k in STAGES if k in res["stages"])
                    + "]"
                    if res["stages"]
                    else ""
                ),
                flush=True,
            )
        if "naive" in results:
            nv = results["naive"]
            for label in ("jsonl", "parquet"):
                r = results[label]
                print(
                    f"{label} vs naive: {nv['wall'] / r['wall']:.2f}x the speed "
                    f"(cpu {nv['cpu'] / r['cpu']:.2f}x), "
                    f"{(r['peak'] - r['base']) / max(nv['peak'] - nv['base'], 1):.3f}x the memory "
                    "above baseline "
                    f"({(nv['peak'] - nv['base']) / max(r['peak'] - r['base'], 1):.1f}x less)"
                )
        big, little = results["jsonl"], results["jsonl (n/10)"]
        print(
            f"memory growth from {little['rows']:,} to {big['rows']:,} rows (jsonl): "
            f"{(big['peak'] - little['peak']) / 2**20:+,.0f} MiB peak RSS for "
            f"{text * (args.n / (args.n + small)) / 2**20:,.0f} MiB more text "
            f"({(big['peak'] - little['peak']) / max(args.n, 1):,.0f} B per extra comparison)"
        )


if __name__ == "__main__":
    main()
