"""Benchmark: our Dawid–Skene against crowd-kit's DawidSkene on the same data, in the same run.

    python bench/aggregation.py            # 1M judgments, 10k annotators, 200k comparisons
    python bench/aggregation.py --quick    # 100k judgments, 2k annotators, 20k comparisons

The data are simulated once (seeded; annotator accuracies uniform in 0.55-0.95, log-normal
activity so some annotators do far more work than others, 5 judgments per comparison, no
ties so crowd-kit's two-class model and ours see the same problem) and saved to a temporary
.npz. Each method then runs in its own subprocesses: one timed (wall and CPU seconds; both
implementations are single-threaded, so CPU time is the fairer number on a busy machine) and
one under ``tracemalloc`` for the peak memory allocated during the fit. Building the method's
input (our ``Judgments``, crowd-kit's DataFrame) counts as part of the fit.
Both run with their default options: crowd-kit ``n_iter=100, tol=1e-5`` on the ELBO per
judgment; ours ``max_iter=100, tol=1e-6`` on the log-likelihood per judgment. "accuracy" is
the share of comparisons whose aggregated label equals the simulated truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py would shadow the standard library's queue module for scripts run from here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

SIZES = {
    "full": dict(n_workers=10_000, n_items=200_000, overlap=5),
    "quick": dict(n_workers=2_000, n_items=20_000, overlap=5),
}


def generate(path: Path, n_workers: int, n_items: int, overlap: int, seed: int) -> None:
    from evaluation.stats.simulation import simulate

    rng = np.random.default_rng(seed)
    j, truth = simulate(n_workers, n_items, overlap, accuracy=(0.55, 0.95), activity_sigma=1.0, seed=seed)
    order = rng.permutation(j.n)  # judgments arrive in time order, not grouped by comparison
    np.savez(
        path,
        item=j.item[order],
        worker=j.worker[order],
        label=j.label[order],
        a_left=j.a_left[order],
        truth=truth.label,
        n_workers=n_workers,
        n_items=n_items,
    )


def run_method(method: str, mode: str, data_path: Path, out_path: Path) -> None:
    """Child process: load the data, fit one method, write timings (or peak memory) and labels.

    ``mode="time"``: wall and CPU seconds of the fit, with nothing else running in the process.
    ``mode="memory"``: the fit again under ``tracemalloc`` (which counts numpy and pandas
    buffers), reporting the peak of memory allocated during the fit. Kept apart because
    tracing slows allocation-heavy code.
    """
    import tracemalloc

    import pandas as pd  # imported by both children so that neither pays it inside the fit

    from evaluation.stats.aggregation import aggregate
    from evaluation.stats.judgments import Judgments

    if method == "crowdkit":
        from crowdkit.aggregation import DawidSkene
    data = np.load(data_path)
    item, worker, label, a_left = data["item"], data["worker"], data["label"], data["a_left"]
    n_items, n_workers = int(data["n_items"]), int(data["n_workers"])
    if mode == "memory":
        tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == "crowdkit":
        df = pd.DataFrame({"task": item, "worker": worker, "label": label.astype(np.int64)})
        ds = DawidSkene(n_iter=100, tol=1e-5).fit(df)
        proba = ds.probas_.sort_index()
        labels = np.asarray(proba.columns)[proba.to_numpy().argmax(axis=1)]
        iterations = len(ds.loss_history_)
    else:
        j = Judgments(
            item=item, worker=worker, label=label, a_left=a_left, n_items=n_items, n_workers=n_workers
        )
        result = aggregate(j, method)
        labels = np.asarray(result.label)
        iterations = result.iterations
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report = {"method": method, "iterations": iterations}
    if mode == "memory":
        report["peak_traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        report.update(seconds=seconds, cpu_seconds=cpu_seconds)
        np.save(out_path.with_suffix(".labels.npy"), labels)
    out_path.write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10x smaller problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-crowdkit", action="store_true")
    parser.add_argument("--skip-memory", action="store_true", help="no separate tracemalloc runs")
    parser.add_argument(
        "--_child", nargs=4, metavar=("METHOD", "MODE", "DATA", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args._child:
        method, mode, data, out = args._child
        run_method(method, mode, Path(data), Path(out))
        return

    size = SIZES["quick" if args.quick else "full"]
    methods = ["majority", "dawid_skene", "dawid_skene_debiased"] + (
        [] if args.skip_crowdkit else ["crowdkit"]
    )
    modes = ["time"] + ([] if args.skip_memory else ["memory"])
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        generate(data_path, seed=args.seed, **size)
        truth = np.load(data_path)["truth"]
        n = size["n_items"] * size["overlap"]
        print(
            f"{n:,} judgments, {size['n_workers']:,} annotators, {size['n_items']:,} comparisons, no ties; "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}"
        )
        results, labels = {m: {} for m in methods}, {}
        for method in methods:
            for mode in modes:
                out = Path(tmp) / f"{method}-{mode}.json"
                cmd = [sys.executable, __file__, "--_child", method, mode, str(data_path), str(out)]
                subprocess.run(cmd, check=True)
                results[method].update(json.loads(out.read_text()))
                if mode == "time":
                    labels[method] = np.load(out.with_suffix(".labels.npy"))
        load = os.getloadavg()[0]

    names = {
        "majority": "ours: majority vote",
        "dawid_skene": "ours: Dawid–Skene",
        "dawid_skene_debiased": "ours: Dawid–Skene, position-debiased",
        "crowdkit": "crowd-kit 1.4 DawidSkene",
    }
    print()
    print(
        "| method | wall (s) | CPU (s) | iterations | CPU ms / iteration | fit peak memory (MiB) | accuracy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, r in results.items():
        per_iter = 1000 * r["cpu_seconds"] / r["iterations"] if r["iterations"] else float("nan")
        memory = f"{r['peak_traced_mib']:.0f}" if "peak_traced_mib" in r else "-"
        acc = (labels[method] == truth).mean()
        print(
            f"| {names[method]} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['iterations']} | "
            f"{per_iter:.0f} | {memory} | {acc:.4f} |"
        )
    if "crowdkit" in results:
        ours, ck = results["dawid_skene"], results["crowdkit"]
        per_iter = (ck["cpu_seconds"] / ck["iterations"]) / (ours["cpu_seconds"] / ours["iterations"])
        print(
            f"\nDawid–Skene, ours vs crowd-kit: {ck['seconds'] / ours['seconds']:.1f}x faster (wall), "
            f"{ck['cpu_seconds'] / ours['cpu_seconds']:.1f}x (CPU), {per_iter:.1f}x per iteration (CPU)"
        )
        if "peak_traced_mib" in ours:
            ratio = ck["peak_traced_mib"] / ours["peak_traced_mib"]
            ours_mib, ck_mib = ours["peak_traced_mib"], ck["peak_traced_mib"]
            print(f"fit peak memory: {ratio:.1f}x less ({ours_mib:.0f} vs {ck_mib:.0f} MiB)")
        same = (labels["dawid_skene"] == labels["crowdkit"]).mean()
        print(f"same labels on {same:.2%} of comparisons")
    cpus = os.cpu_count()
    print(f"\nload average after the run: {load:.1f} on {cpus} CPUs (wall times include waiting for a CPU)")


if __name__ == "__main__":
    main()
