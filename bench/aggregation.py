"""Benchmark: our Dawid–Skene against crowd-kit's DawidSkene on the same data, in the same run.

    python bench/aggregation.py            # 1M judgments, 10k annotators, 200k comparisons
    python bench/aggregation.py --quick    # 100k judgments, 2k annotators, 20k comparisons

The data are simulated once (seeded; annotator accuracies uniform in 0.55-0.95, log-normal
activity so some annotators do far more work than others, 5 judgments per comparison, no
ties so crowd-kit's two-class model and ours see the same problem) and saved to a temporary
.npz. Each method then runs in its own subprocess, so its peak memory (``ru_maxrss``) is its
own: we report the process peak and the growth of the peak during the fit (building the
method's input — our ``Judgments``, crowd-kit's DataFrame — counts as part of the fit).
Both run with their default options: crowd-kit ``n_iter=100, tol=1e-5`` on the ELBO per
judgment; ours ``max_iter=100, tol=1e-6`` on the log-likelihood per judgment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "full": dict(n_workers=10_000, n_items=200_000, overlap=5),
    "quick": dict(n_workers=2_000, n_items=20_000, overlap=5),
}


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def generate(path: Path, n_workers: int, n_items: int, overlap: int, seed: int) -> None:
    from evaluation.aggregation import simulate

    rng = np.random.default_rng(seed)
    j, truth = simulate(n_workers, n_items, overlap, accuracy=(0.55, 0.95), activity_sigma=1.0, seed=seed)
    order = rng.permutation(j.n)  # judgments arrive in time order, not grouped by comparison
    np.savez(path, item=j.item[order], worker=j.worker[order], label=j.label[order],
             a_left=j.a_left[order], truth=truth.label, n_workers=n_workers, n_items=n_items)


def run_method(method: str, data_path: Path, out_path: Path) -> None:
    """Child process: load the data, fit one method, write timings and labels."""
    import pandas  # noqa: F401  (import cost is not part of the fit for either method)

    from evaluation.aggregation import Judgments, aggregate

    if method == "crowdkit":
        from crowdkit.aggregation import DawidSkene
    data = np.load(data_path)
    item, worker, label, a_left = data["item"], data["worker"], data["label"], data["a_left"]
    n_items, n_workers = int(data["n_items"]), int(data["n_workers"])
    rss_before = _maxrss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == "crowdkit":
        import pandas as pd

        df = pd.DataFrame({"task": item, "worker": worker, "label": label.astype(np.int64)})
        ds = DawidSkene(n_iter=100, tol=1e-5).fit(df)
        proba = ds.probas_.sort_index()
        labels = np.full(n_items, -1)
        labels[proba.index.to_numpy()] = proba.to_numpy().argmax(axis=1)
        labels = np.asarray(proba.columns)[labels]
        iterations = len(ds.loss_history_)
    else:
        j = Judgments(item=item, worker=worker, label=label, a_left=a_left, n_items=n_items, n_workers=n_workers)
        result = aggregate(j, method)
        labels = np.asarray(result.label)
        iterations = result.iterations
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rss_after = _maxrss_mib()
    np.save(out_path.with_suffix(".labels.npy"), labels)
    out_path.write_text(json.dumps({
        "method": method, "seconds": seconds, "cpu_seconds": cpu_seconds, "iterations": iterations,
        "peak_rss_mib": rss_after, "fit_peak_growth_mib": rss_after - rss_before,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x smaller problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-crowdkit", action="store_true")
    parser.add_argument("--_child", nargs=3, metavar=("METHOD", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        method, data, out = args._child
        run_method(method, Path(data), Path(out))
        return

    size = SIZES["quick" if args.quick else "full"]
    methods = ["majority", "dawid_skene", "dawid_skene_debiased"] + ([] if args.skip_crowdkit else ["crowdkit"])
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        generate(data_path, seed=args.seed, **size)
        truth = np.load(data_path)["truth"]
        n = size["n_items"] * size["overlap"]
        print(f"{n:,} judgments, {size['n_workers']:,} annotators, {size['n_items']:,} comparisons; "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
        results, labels = {}, {}
        for method in methods:
            out = Path(tmp) / f"{method}.json"
            subprocess.run([sys.executable, __file__, "--_child", method, str(data_path), str(out)], check=True)
            results[method] = json.loads(out.read_text())
            labels[method] = np.load(out.with_suffix(".labels.npy"))

    names = {"majority": "ours: majority vote", "dawid_skene": "ours: Dawid–Skene",
             "dawid_skene_debiased": "ours: Dawid–Skene, position-debiased", "crowdkit": "crowd-kit DawidSkene"}
    print("\n| method | wall (s) | CPU (s) | iterations | CPU s / iteration | peak RSS (MiB) | fit peak growth (MiB) | accuracy vs truth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, r in results.items():
        per_iter = r["cpu_seconds"] / r["iterations"] if r["iterations"] else float("nan")
        acc = (labels[method] == truth).mean()
        print(f"| {names[method]} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['iterations']} | {per_iter:.3f} | "
              f"{r['peak_rss_mib']:.0f} | {r['fit_peak_growth_mib']:.0f} | {acc:.4f} |")
    if "crowdkit" in results:
        ours, ck = results["dawid_skene"], results["crowdkit"]
        same = (labels["dawid_skene"] == labels["crowdkit"]).mean()
        print(f"\nDawid–Skene speed-up over crowd-kit: {ck['seconds'] / ours['seconds']:.1f}x wall, "
              f"{ck['cpu_seconds'] / ours['cpu_seconds']:.1f}x CPU, "
              f"{(ck['cpu_seconds'] / ck['iterations']) / (ours['cpu_seconds'] / ours['iterations']):.1f}x CPU per iteration")
        print(f"Fit peak memory growth: crowd-kit {ck['fit_peak_growth_mib']:.0f} MiB, ours {ours['fit_peak_growth_mib']:.0f} MiB "
              f"({ck['fit_peak_growth_mib'] / max(ours['fit_peak_growth_mib'], 1):.1f}x)")
        print(f"Same labels on {same:.2%} of comparisons")
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
