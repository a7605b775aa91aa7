"""The dataset card (``README.md``) and the statistics it reports (:func:`compute_stats`:
counts, label shares, confidence and weight summaries, agreement with bootstrap intervals).
"""

from __future__ import annotations

import json

import numpy as np
from django.conf import settings

from annotate.models import Pool

from ..models import Export
from ..stats.agreement import agreement_report, agreement_summary
from ..stats.jsonsafe import clean_json
from ..stats.judgments import TIE, A, B
from .folder import JSONL_SPLIT_FILES, JUDGMENT_FIELDS, WEIGHT_RULE, pair_fields
from .options import ExportOptions
from .selection import Selection


def _n_boot(n_judgments: int) -> int:
    """Bootstrap replicates: ``PREFLOOP_EXPORT_BOOTSTRAP`` (1000), fewer for very large
    exports (at least 100; the card says how many)."""
    most = int(getattr(settings, "PREFLOOP_EXPORT_BOOTSTRAP", 1000))
    return int(min(most, max(min(100, most), 20_000_000 // max(n_judgments, 1))))


def _summary(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def compute_stats(sel: Selection, counts: dict[str, int]) -> dict:
    t = sel.table
    j = sel.judgments
    selected = sel.selected
    n_boot = _n_boot(j.n)
    if len(sel.pool_ids) > 1:
        report = agreement_report(j, n_boot=n_boot, seed=sel.opts.seed)
    else:  # one pool: its figures are the overall ones
        overall = agreement_summary(j, n_boot=n_boot, seed=sel.opts.seed)
        report = {"overall": overall, "per_group": {0: overall}}
    dense_name = {
        i: (sel.pool_names.get(int(pid), f"pool {pid}") if pid >= 0 else "(no pool)")
        for i, pid in enumerate(sel.pool_ids)
    }
    per_pool = {dense_name[int(g)]: s for g, s in report.get("per_group", {}).items()}
    between = report.get("between_groups")
    if between is not None:
        between = {"pools": [dense_name[i] for i in range(len(sel.pool_ids))], **between}
    pools = []
    worker_pool = j.pool
    for i, pid in enumerate(sel.pool_ids):
        in_pool = t.pool_of_judgment == pid
        pools.append(
            {
                "name": dense_name[i],
                "n_judgments": int(in_pool.sum()),
                "n_annotators": int((worker_pool == i).sum()),
            }
        )
    prompts_sel = sel.item_prompt[selected]
    test_sel = sel.item_test[selected]
    label = sel.label[selected]
    res = sel.result
    weight_tbl = (
        np.where(
            label == TIE,
            res.proba[selected, 2],
            np.where(label == B, res.proba[selected, 1], res.proba[selected, 0]),
        )
        * sel.support[selected]
    )
    return clean_json(
        {
            "n_pairs": sel.n_pairs,
            "n_train": counts.get("train", 0),
            "n_test": counts.get("test", 0),
            "n_prompts": int(np.unique(prompts_sel).size),
            "n_prompts_train": int(np.unique(prompts_sel[~test_sel]).size),
            "n_prompts_test": int(np.unique(prompts_sel[test_sel]).size),
            "n_comparisons_aggregated": int(t.n_items),
            "n_judgments": int(len(t)),
            "n_judgment_rows": counts.get("judgment_rows"),
            "n_annotators": int(t.n_workers),
            "n_pools": len(sel.pool_ids),
            "pools": pools,
            "removed": sel.removed,
            "n_ties_included": sel.n_ties_included,
            "n_both_bad_included": sel.n_both_bad_included,
            "n_gold": int((t.gold[selected] >= 0).sum()),
            "rounds": sorted(set(sel.item_round[selected].tolist())),
            "style": "conversational" if sel.conversational else "standard",
            "label_counts": {
                "a": int((label == A).sum()),
                "b": int((label == B).sum()),
                "tie": int((label == TIE).sum()),
            },
            "confidence": _summary(sel.confidence[selected]),
            "weight": _summary(weight_tbl),
            "annotator_weight": _summary(sel.worker_weight),
            "weights_source": sel.weights_source,
            "aggregation": {
                "method": res.method,
                "pool_balanced": sel.opts.pool_balanced,
                "iterations": res.iterations,
                "converged": bool(res.converged),
                "log_likelihood": res.log_likelihood,
                "class_prior": res.prior,
            },
            "agreement": {
                "n_boot": n_boot,
                "level": 0.95,
                "overall": report["overall"],
                "per_pool": per_pool,
                "between_pools": between,
            },
        }
    )


# --------------------------------------------------------------------------- dataset card


STYLE_TEXT = {
    "conversational": "conversational (prompt/chosen/rejected are message lists)",
    "standard": "standard (prompt/chosen/rejected are strings)",
}
METHOD_TEXT = {
    "majority": "majority vote, each vote weighted by its annotator's weight w_j",
    "gold_weighted": "gold-weighted vote: each vote counts log(acc / (1 - acc)) of its annotator's "
    "Beta(2, 1)-posterior gold accuracy",
    "dawid_skene": "Dawid–Skene EM with per-annotator 3x3 confusion matrices (A / B / tie), "
    "initialized from vote shares, gold items clamped",
    "dawid_skene_debiased": "Dawid–Skene EM with an explicit per-annotator position (left/right click) "
    "bias, learned from judgments with a recorded display order (where it was not recorded, a "
    "position click counts as landing on either response with probability 1/2), gold items clamped",
}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(stat: dict | None) -> str:
    if not stat:
        return "n/a"
    v, lo, hi = stat.get("value"), stat.get("low"), stat.get("high")
    if v is None:
        return "n/a"
    if lo is None or hi is None:
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _jsonl_data_files(stats: dict) -> str:
    """The ``data_files`` argument that loads the JSONL files as their splits."""
    splits = ["train"] + (["test"] if stats["n_test"] else [])
    return "{" + ", ".join(f'"{s}": "{JSONL_SPLIT_FILES[s]}"' for s in splits) + "}"


def render_card(export: Export, opts: ExportOptions, stats: dict) -> str:
    """The dataset card (README.md), generated from the export's options and statistics."""
    project = export.project
    lic = (project.license or "").strip()
    name = export.name or f"{project.name} preferences (export {export.pk})"
    n = stats["n_pairs"]
    size = (
        "n<1K"
        if n < 1000
        else "1K<n<10K"
        if n < 10_000
        else "10K<n<100K"
        if n < 100_000
        else "100K<n<1M"
        if n < 1_000_000
        else "1M<n<10M"
    )
    pool_names = {p: nm for p, nm in Pool.objects.filter(project=project).values_list("pk", "name")}
    front = [
        "---",
        f"pretty_name: {json.dumps(name)}",
        f"license: {json.dumps(lic) if lic else 'unknown'}",
        "tags: [preference, dpo, rlhf, human-feedback, prefloop]",
        "task_categories: [text-generation]",
        f"size_categories: [{size}]",
        "---",
        "",
    ]
    L = front + [f"# {name}", ""]
    L += [
        f"Human preference pairs from the prefloop project **{project.name}**, exported on "
        f"{export.created_at:%Y-%m-%d} (export {export.pk}). Each pair was judged by human annotators; "
        f"the judgments were aggregated into a calibrated probability that the chosen response is better, "
        f"and every pair carries a training weight.",
        "",
        "## Contents",
        "",
        "| | count |",
        "|---|---|",
        f"| pairs | {stats['n_pairs']} (train {stats['n_train']}, test {stats['n_test']}) |",
        f"| prompts | {stats['n_prompts']} "
        f"(train {stats['n_prompts_train']}, test {stats['n_prompts_test']}) |",
        f"| comparisons aggregated | {stats['n_comparisons_aggregated']} |",
    ]
    if stats["removed"].get("undecided"):
        L.append(
            f"| undecided (every judgment by an annotator of weight 0; no label, never a pair) | "
            f"{stats['removed']['undecided']} |"
        )
    L += [
        f"| removed by min_confidence | {stats['removed'].get('min_confidence', 0)} |",
        f"| ties excluded / included | {stats['removed'].get('ties', 0)} / {stats['n_ties_included']} |",
        f"| both-bad excluded / included | {stats['removed'].get('both_bad', 0)} "
        f"/ {stats['n_both_bad_included']} |",
        f"| gold (calibration) comparisons | {stats['n_gold']} included, "
        f"{stats['removed'].get('gold', 0)} left out |",
        f"| judgments | {stats['n_judgments']} |",
        f"| annotators | {stats['n_annotators']} |",
        f"| pools | {stats['n_pools']}: "
        + ", ".join(
            f"{p['name']} ({p['n_annotators']} annotators, {p['n_judgments']} judgments)"
            for p in stats["pools"]
        )
        + " |",
        f"| rounds | {', '.join(map(str, stats['rounds']))} |",
        f"| format | {STYLE_TEXT[stats['style']]} |",
        f"| license | {lic or 'not set in the project'} |",
        "",
        "## Files",
        "",
    ]
    descr = {
        "jsonl": f"`{JSONL_SPLIT_FILES['train']}`"
        + (f" and `{JSONL_SPLIT_FILES['test']}`" if stats["n_test"] else "")
        + ": one JSON object per pair in TRL's preference format, one file per split "
        "(as `load_dataset(\"json\", data_files=...)` expects).",
        "parquet": "`preferences.parquet`: the same rows and columns as Parquet (zstd).",
        "hf": "`hf/`: a Hugging Face `datasets` DatasetDict (`train`"
        + (" and `test`" if opts.test_fraction > 0 else "")
        + ") written with `save_to_disk`.",
        "csv": "`preferences.csv`: the same rows for spreadsheets; prompt, chosen and rejected are "
        "plain text. A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a "
        "leading `'` so that a spreadsheet shows it instead of running it as a formula (OWASP's advice "
        "against CSV injection); use JSONL or Parquet for the exact text.",
        "judgments": "`judgments.jsonl`: one row per human judgment (pseudonymized annotators) on the "
        "aggregated comparisons, for your own aggregation"
        + ("." if opts.include_gold else " (gold comparisons left out)."),
    }
    L += [f"- {descr[f]}" for f in opts.formats]
    L += [
        "- `metadata.json`: options, counts, statistics, the file list with SHA-256 sums and the "
        "content hash.",
        "",
    ]
    L += ["## Filters and options", "", "| option | value |", "|---|---|"]
    L += [
        f"| rounds | {', '.join(map(str, opts.rounds)) if opts.rounds else 'all'} |",
        f"| pools | {', '.join(pool_names.get(p, str(p)) for p in opts.pools) if opts.pools else 'all'} |",
        f"| excluded annotators | {'included' if opts.include_excluded else 'left out'} |",
        "| gold comparisons | "
        + (
            "included (label = the gold answer)"
            if opts.include_gold
            else "left out (they stay useful for calibration)"
        )
        + " |",
        f"| min_confidence | {opts.min_confidence:g} |",
        f"| include_ties | {opts.include_ties} |",
        f"| include_both_bad | {opts.include_both_bad} |",
        f"| test_fraction | {opts.test_fraction:g} (split by prompt, seed {opts.seed}) |",
        f"| rationales | {'included in judgments.jsonl' if opts.include_rationales else 'left out'} |",
        "| pseudonyms | "
        + (
            "stable across this project’s exports"
            if opts.stable_pseudonyms
            else "stable within this export only"
        )
        + " |",
        "",
        "## Aggregation",
        "",
        f"Method **{opts.method}**: {METHOD_TEXT[opts.method]}."
        + (
            " Pools are balanced: every pool present on a comparison carries the same total weight."
            if opts.pool_balanced
            else ""
        ),
    ]
    a = stats["aggregation"]
    if opts.method.startswith("dawid_skene"):
        prior = a.get("class_prior") or []
        L += [
            "",
            f"EM ran {a['iterations']} iterations ({'converged' if a['converged'] else 'did not converge'}; "
            "defaults: smoothing 0.1, prior smoothing 1.0, tol 1e-6, max 100 iterations). "
            + (
                f"Estimated class prior: A {_fmt(prior[0])}, B {_fmt(prior[1])}, tie {_fmt(prior[2])}."
                if len(prior) == 3
                else ""
            ),
        ]
    conf = stats.get("confidence") or {}
    weight_stats = stats.get("weight") or {}
    L += [
        "",
        f"`confidence` (the largest posterior) over the exported pairs: mean {_fmt(conf.get('mean'))}, "
        f"median {_fmt(conf.get('median'))}, min {_fmt(conf.get('min'))}.",
        "",
        "## Weight rule",
        "",
        "```",
        WEIGHT_RULE,
        "```",
        "",
        f"Annotator weights come from {stats['weights_source']}. `weight` over the exported pairs: "
        f"mean {_fmt(weight_stats.get('mean'))}, median {_fmt(weight_stats.get('median'))}.",
        "Ties and both-bad have no chosen/rejected: they are excluded by default; when included they are "
        "written with `label` `tie` or `both_bad`, response A as `chosen`, and `p_chosen` = 0.5"
        + (
            f", and `tie` = true ({stats['n_ties_included']} tie and {stats['n_both_bad_included']} both-bad "
            "rows here). A plain DPO trainer would read them as preferences of A: filter `tie` out, or "
            "train with soft labels, which read `p_chosen` = 0.5 as no preference."
            if opts.writes_ties
            else "."
        ),
        "",
        "## Agreement",
        "",
        f"On all {stats['n_judgments']} aggregated judgments; 95% bootstrap intervals over comparisons "
        f"({stats['agreement']['n_boot']} replicates).",
        "",
        "| statistic | overall |" + "".join(f" {p} |" for p in stats["agreement"]["per_pool"]),
        "|---|---|" + "---|" * len(stats["agreement"]["per_pool"]),
    ]
    overall = stats["agreement"]["overall"]
    per_pool = stats["agreement"]["per_pool"]
    for key, label in (
        ("raw_agreement", "raw agreement"),
        ("raw_agreement_no_ties", "raw agreement without ties"),
        ("krippendorff_alpha", "Krippendorff's alpha (nominal)"),
        ("fleiss_kappa", "Fleiss' kappa"),
        ("cohen_kappa", "mean pairwise Cohen's kappa"),
    ):
        L.append(
            f"| {label} | {_ci(overall.get(key))} |"
            + "".join(f" {_ci(s.get(key))} |" for s in per_pool.values())
        )
    L += [
        f"| comparisons with 2+ judgments | {overall.get('n_items')} |"
        + "".join(f" {s.get('n_items')} |" for s in per_pool.values()),
        "",
    ]
    between = stats["agreement"].get("between_pools")
    if between and len(between.get("pools", [])) > 1:
        names = between["pools"]
        L += [
            "Raw agreement between pools (pairs of votes on the same comparison, one from each pool):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for i, nm in enumerate(names):
            L.append(
                f"| {nm} | "
                + " | ".join(_fmt(between["raw_agreement"][i][k]) for k in range(len(names)))
                + " |"
            )
        L.append("")
    L += ["## Fields", "", "| field | meaning |", "|---|---|"]
    L += [f"| `{k}` | {v} |" for k, v in pair_fields(opts.writes_ties).items()]
    if opts.include_judgments:
        L += ["", "`judgments.jsonl`:", "", "| field | meaning |", "|---|---|"]
        L += [
            f"| `{k}` | {v} |"
            for k, v in JUDGMENT_FIELDS.items()
            if k != "rationale" or opts.include_rationales
        ]
    L += [
        "",
        "Annotators are pseudonymized: `ann-` + 16 hex digits of an HMAC of the user id under a secret key "
        + (
            "derived from the server's secret and the project (the same person has the same pseudonym in "
            "every export of this project made with stable pseudonyms)."
            if opts.stable_pseudonyms
            else "drawn for this export only (the same person has a different pseudonym in another export)."
        ),
        "No usernames, e-mails or user ids appear in any file.",
        "",
        "## Load",
        "",
        "```python",
    ]
    if "hf" in opts.formats:
        L += [
            "from datasets import load_from_disk",
            "",
            'ds = load_from_disk("hf")  # DatasetDict: '
            + ", ".join(["train"] + (["test"] if opts.test_fraction > 0 else [])),
            "",
        ]
    jsonl_files = _jsonl_data_files(stats)
    if "jsonl" in opts.formats:
        L += [
            "from datasets import load_dataset",
            "",
            f'pairs = load_dataset("json", data_files={jsonl_files})  # DatasetDict: '
            + ", ".join(["train"] + (["test"] if stats["n_test"] else [])),
            "",
        ]
    if "parquet" in opts.formats:
        L += ['pairs = load_dataset("parquet", data_files="preferences.parquet", split="train")', ""]
    L += [
        "```",
        "",
        "## Train with TRL (DPO)",
        "",
        "```python",
        "from datasets import load_from_disk"
        if "hf" in opts.formats
        else "from datasets import load_dataset",
        "from trl import DPOConfig, DPOTrainer",
        "",
        'ds = load_from_disk("hf")'
        if "hf" in opts.formats
        else f'ds = load_dataset("json", data_files={jsonl_files})',
    ]
    keep = 'not r["tie"]' if opts.writes_ties else 'r["label"] == "preference"'
    L += [
        f'train = ds["train"].filter(lambda r: {keep})  # ties have no chosen/rejected',
        "trainer = DPOTrainer(",
        '    model="path/to/your/model",',
        '    args=DPOConfig(output_dir="dpo-out", per_device_train_batch_size=8),',
        "    train_dataset=train,",
        '    eval_dataset=ds["test"]'
        + ("," if opts.test_fraction > 0 else "  # no test split: drop this line"),
        ")",
        "trainer.train()",
        "```",
        "",
        "TRL reads `prompt`, `chosen` and `rejected` and ignores the other columns. To use the calibration, "
        "filter on `confidence`/`weight`, or train with prefloop's weighted DPO loss (`training/losses.py`), "
        "which multiplies each pair's loss by `weight`.",
        "",
        "## Integrity",
        "",
        "`metadata.json` holds `content_hash`: SHA-256 over the lines `<path>\\t<bytes>\\t<sha256>` of "
        "every file except `metadata.json`, in sorted path order. The export is immutable once built.",
        "",
    ]
    return "\n".join(L)
