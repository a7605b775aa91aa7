"""Quality dashboard at scale: the dashboard page, its HTMX table and the quality API with many annotators.

    .venv/bin/python bench/dashboard.py [--annotators 10000] [--repeats 20]

Runs on a fresh SQLite file in a temporary folder (WAL, as the app runs it), or, with
DATABASE_URL set, on a throw-away PostgreSQL database ``bench_prefloop_dashboard``.

Data: one project with ``--annotators`` annotator members in 5 pools (1% excluded, 2% with a
weight override, 2% recently joined with no statistics yet) and one admin. The per-annotator
statistics are NOT computed by ``recompute_quality`` (that needs ~1M judgments; see
bench/aggregation.py for its speed): the ``AnnotatorQuality`` rows are filled directly with
realistic random values by ``bulk_create`` (log-normal activity, ~10% gold judgments, Beta(2, 1)
posterior gold accuracy with its 95% interval, Dawid–Skene accuracy, biases with standard errors,
tie rates, speeds, flags and weights derived as the services derive them), and one succeeded
``QualityReport`` gets a ``data`` dict of the shape ``recompute_quality`` writes, the per-annotator
extras included (so the page reads as much JSON as in production).

Timed with Django's test ``Client`` (in-process, DEBUG off, ``force_login`` as the project admin),
``--repeats`` requests each after one warm-up: the dashboard page, a sorted later page, the HTMX
table fragment, the quality API list (first page), and as the peer the app's home page (the
project list) measured the same way in the same run. Prints p50/p95 (ms), the SQL queries of one
request, the response size, and each p50 as a multiple of the peer's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py would shadow the standard library's queue module for scripts run from here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from bench._django import bench_database  # noqa: E402

DB_NAME = "bench_prefloop_dashboard"
POOLS = ("crowd-en", "crowd-de", "experts", "students", "vendor-b")
MODELS = ("tiny-sft", "tiny-dpo", "tiny-ppo")


def _interval(value: float, half: float) -> dict:
    return {"value": value, "low": max(-1.0, value - half), "high": min(1.0, value + half)}


def fill(n: int, seed: int = 0):
    """The project, its admin, and the stored statistics of ``n`` annotators (see the docstring)."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from scipy import stats

    from annotate.models import Membership, Pool, Project, Role
    from evaluation.models import AnnotatorQuality, JobStatus, QualityReport

    rng = np.random.default_rng(seed)
    User = get_user_model()
    project = Project.objects.create(name="bench-dashboard")
    pools = [Pool.objects.create(project=project, name=name) for name in POOLS]
    admin = User.objects.create(username="bench-admin")
    Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
    users = User.objects.bulk_create(
        [User(username=f"annotator-{i:05d}") for i in range(n)], batch_size=2000
    )
    pool_of = rng.integers(0, len(pools), n)
    excluded = rng.random(n) < 0.01
    override = np.where(rng.random(n) < 0.02, rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n), np.nan)
    Membership.objects.bulk_create(
        [
            Membership(
                project=project,
                user=u,
                role=Role.ANNOTATOR,
                pool=pools[pool_of[i]],
                excluded=bool(excluded[i]),
                weight_override=None if np.isnan(override[i]) else float(override[i]),
            )
            for i, u in enumerate(users)
        ],
        batch_size=2000,
    )

    # Activity and skill, as in bench/aggregation.py: log-normal activity (~100 judgments each),
    # true accuracy 0.55–0.95.
    has_stats = rng.random(n) >= 0.02
    n_judg = np.maximum(1, rng.lognormal(np.log(70), 0.9, n)).astype(int)
    skill = rng.uniform(0.55, 0.95, n)
    n_gold = rng.binomial(n_judg, 0.1)
    correct = rng.binomial(n_gold, skill)
    a, b = 2 + correct, 1 + (n_gold - correct)  # Beta(2, 1) prior
    gold_mean = a / (a + b)
    gold_low, gold_high = stats.beta.ppf(0.025, a, b), stats.beta.ppf(0.975, a, b)
    ds = np.clip(skill + rng.normal(0, 0.04, n), 0.3, 0.999)
    order_known = rng.random(n) >= 0.1
    pos_se = 0.5 / np.sqrt(n_judg)
    pos = rng.normal(0, 0.03, n) + np.where(rng.random(n) < 0.03, 0.2, 0.0)
    len_se = 0.6 / np.sqrt(n_judg)
    length = rng.normal(0, 0.04, n)
    tie = rng.beta(1.5, 12, n)
    both_bad = rng.beta(1, 30, n)
    seconds = rng.lognormal(np.log(25), 0.5, n)
    acc_used = np.where(n_gold >= 10, gold_mean, ds)
    base = np.clip(2 * acc_used - 1, 0, 1)
    pos_factor = np.where(order_known, np.clip(1 - 2 * np.maximum(0, np.abs(pos) - 1.96 * pos_se), 0, 1), 1)
    len_factor = np.clip(1 - 2 * np.maximum(0, np.abs(length) - 1.96 * len_se), 0, 1)
    too_fast = seconds < 6
    weight = np.clip(base * pos_factor * len_factor * np.where(too_fast, 0.5, 1.0), 0, 1)

    qualities, extras = [], {}
    for i, u in enumerate(users):
        if not has_stats[i]:
            continue
        flags = []
        if acc_used[i] < 0.7:
            flags.append("low_accuracy")
        if weight[i] < 0.3:
            flags.append("low_weight")
        if order_known[i] and abs(pos[i]) > 1.96 * pos_se[i]:
            flags.append("position_bias")
        if abs(length[i]) > 1.96 * len_se[i]:
            flags.append("length_bias")
        if too_fast[i]:
            flags.append("too_fast")
        if excluded[i]:
            flags.append("excluded")
        gold = n_gold[i] > 0
        qualities.append(
            AnnotatorQuality(
                project=project,
                annotator=u,
                n_judgments=int(n_judg[i]),
                n_gold=int(n_gold[i]),
                gold_correct=int(correct[i]),
                gold_accuracy=float(gold_mean[i]) if gold else None,
                gold_accuracy_low=float(gold_low[i]) if gold else None,
                gold_accuracy_high=float(gold_high[i]) if gold else None,
                estimated_accuracy=float(ds[i]),
                position_bias=float(pos[i]) if order_known[i] else None,
                position_bias_se=float(pos_se[i]) if order_known[i] else None,
                length_bias=float(length[i]),
                length_bias_se=float(len_se[i]),
                tie_rate=float(tie[i]),
                both_bad_rate=float(both_bad[i]),
                median_seconds=float(seconds[i]),
                flags=flags,
                weight=float(weight[i]),
            )
        )
        extras[str(u.pk)] = {
            "accuracy_source": "gold" if n_gold[i] >= 10 else "dawid_skene",
            "accuracy_used": float(acc_used[i]),
            "factors": {
                "base": float(base[i]),
                "position": float(pos_factor[i]),
                "length": float(len_factor[i]),
                "speed": 0.5 if too_fast[i] else 1.0,
            },
            "order_known": bool(order_known[i]),
            "position_low": float(pos[i] - 1.96 * pos_se[i]) if order_known[i] else None,
            "position_high": float(pos[i] + 1.96 * pos_se[i]) if order_known[i] else None,
            "position_relative": float(pos[i] * 2) if order_known[i] else None,
            "length_low": float(length[i] - 1.96 * len_se[i]),
            "length_high": float(length[i] + 1.96 * len_se[i]),
            "length_n": int(n_judg[i] * 0.8),
            "tie_low": float(max(0.0, tie[i] - 0.05)),
            "tie_high": float(min(1.0, tie[i] + 0.05)),
        }
    AnnotatorQuality.objects.bulk_create(qualities, batch_size=2000)

    n_total = int(n_judg[has_stats].sum())
    summary = {
        "raw_agreement": _interval(0.71, 0.01),
        "raw_agreement_no_ties": _interval(0.76, 0.01),
        "krippendorff_alpha": _interval(0.42, 0.02),
        "fleiss_kappa": _interval(0.41, 0.02),
        "cohen_kappa": _interval(0.40, 0.03),
        "n_items": n_total // 5,
        "n_workers": int(has_stats.sum() - excluded[has_stats].sum()),
    }
    k = len(pools)
    now = timezone.now()
    data = {
        "version": 1,
        "computed_at": now.isoformat(),
        "n_judgments": n_total,
        "n_items": n_total // 5,
        "n_annotators": int(has_stats.sum()),
        "n_gold_items": n_total // 50,
        "settings": {
            "min_accuracy": 0.7,
            "min_weight": 0.3,
            "bootstrap": 500,
            "bootstrap_time": 200,
            "bootstrap_bt": 100,
            "min_gold": 10,
            "gold_prior": [2.0, 1.0],
        },
        "pools": [
            {"id": p.pk, "name": p.name, "n_annotators": int((pool_of == i).sum()), "n_judgments": 0}
            for i, p in enumerate(pools)
        ],
        "agreement": {
            "overall": summary,
            "per_pool": [{"pool": p.pk, "name": p.name, **summary} for p in pools],
            "between_pools": {
                "labels": list(POOLS),
                "raw_agreement": [[0.7] * k for _ in range(k)],
                "low": [[0.69] * k for _ in range(k)],
                "high": [[0.71] * k for _ in range(k)],
                "n_pairs": [[1000] * k for _ in range(k)],
            },
        },
        "pool_matrix": {
            "labels": list(POOLS),
            "disagreement": [[0.3] * k for _ in range(k)],
            "tv_distance": [[0.1] * k for _ in range(k)],
            "n_shared": [[1000] * k for _ in range(k)],
            "n_pairs": [[1000] * k for _ in range(k)],
            "mean_item_tv": 0.12,
            "n_items_multi_pool": n_total // 6,
        },
        "over_time": {
            "unit": "week",
            "points": [
                {
                    "label": f"0{w + 1} Mar 2026",
                    "start": None,
                    "end": None,
                    "n_items": 5000,
                    "n_judgments": 25000,
                    "raw_agreement": _interval(0.7 + w / 100, 0.01),
                    "krippendorff_alpha": _interval(0.4 + w / 100, 0.02),
                }
                for w in range(8)
            ],
        },
        "aggregation": {
            "method": "dawid_skene",
            "label_counts": {"a": n_total // 10, "b": n_total // 10, "tie": n_total // 50},
            "mean_confidence": 0.91,
            "iterations": 14,
            "converged": True,
        },
        "annotators": extras,
        "rounds": [
            {
                "round": r,
                "n_comparisons": 50000,
                "models": [
                    {
                        "name": m,
                        "n": 30000,
                        "win_rate": 0.5 + 0.05 * j,
                        "low": 0.49 + 0.05 * j,
                        "high": 0.51 + 0.05 * j,
                        "strength": 0.1 * j,
                        "strength_low": 0.1 * j - 0.02,
                        "strength_high": 0.1 * j + 0.02,
                        "elo": 20.0 * j,
                    }
                    for j, m in enumerate(MODELS)
                ],
            }
            for r in (0, 1)
        ],
    }
    QualityReport.objects.create(
        project=project,
        status=JobStatus.SUCCEEDED,
        progress=1.0,
        n_judgments=n_total,
        data=data,
        finished_at=now,
    )
    return project, admin


def measure(client, path: str, repeats: int, **headers) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(path, **headers)  # warm-up
    assert response.status_code == 200, (path, response.status_code)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        response = client.get(path, **headers)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path, **headers)
    return {
        "p50": float(np.percentile(times, 50)),
        "p95": float(np.percentile(times, 95)),
        "queries": len(ctx.captured_queries),
        "kb": len(response.content) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    with bench_database(DB_NAME) as connection:
        import django
        from django.conf import settings
        from django.test import Client

        assert not settings.DEBUG
        settings.PREFLOOP_AUTO_QUALITY = False
        on_postgres = connection.vendor == "postgresql"
        version = connection.Database.sqlite_version if connection.vendor == "sqlite" else ""
        if on_postgres:
            with connection.cursor() as cur:
                cur.execute("SHOW server_version")
                version = cur.fetchone()[0]
        print(
            f"backend: {connection.vendor} {version}".strip()
            + f", python {sys.version.split()[0]}, django {django.get_version()}"
        )
        t = time.perf_counter()
        project, admin = fill(args.annotators)
        if on_postgres:
            with connection.cursor() as cur:
                cur.execute("ANALYZE")
        print(f"{args.annotators:,} annotators filled in {time.perf_counter() - t:.1f} s")

        client = Client()
        client.force_login(admin)
        base = f"/projects/{project.pk}/quality/"
        hx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "annotator-table"}
        cases = [
            ("peer: home page (project list)", "/", {}),
            ("dashboard page", base, {}),
            (
                "dashboard, ?sort=gold_accuracy&dir=desc&page=3",
                base + "?sort=gold_accuracy&dir=desc&page=3",
                {},
            ),
            ("HTMX table, ?sort=weight&dir=asc&page=2", base + "?sort=weight&dir=asc&page=2", hx),
            ("API list, first page", f"/api/projects/{project.pk}/quality/annotators/", {}),
            (
                "API list, ?sort=position_bias&dir=desc&offset=5000",
                f"/api/projects/{project.pk}/quality/annotators/?sort=position_bias&dir=desc&offset=5000",
                {},
            ),
        ]
        results = [(name, measure(client, path, args.repeats, **headers)) for name, path, headers in cases]
        peer = results[0][1]["p50"]
        print(f"\n{args.repeats} requests each (after one warm-up); queries and size of one more request")
        print("| request | p50 (ms) | p95 (ms) | queries | KiB | p50 / peer p50 |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in results:
            print(
                f"| {name} | {r['p50']:.1f} | {r['p95']:.1f} | {r['queries']} | {r['kb']:.0f} | "
                f"{r['p50'] / peer:.1f}x |"
            )


if __name__ == "__main__":
    main()
