"""A loop round's report: what the calibration recovered against the simulator's truth, the hidden
utility of the round's samples, and the annotators' verdict on the round's new model.

Calibration: per simulated annotator, the true accuracy (their share of non-tie judgments of
pairs with different utilities that picked the higher-utility response, over every round so
far) against the Dawid–Skene and gold estimates; the true position bias (P(left) − ½ that their
behaviour produces) and length-bias setting against the estimates; correlations across
annotators. Utility: the mean hidden utility of each model's responses in the round, and of the
round-0 responses to the same prompts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr

from annotate.models import Comparison
from evaluation.models import AnnotatorQuality
from evaluation.rounds.verdicts import round_verdicts


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _corr(fn, x, y):
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs)
    if np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return _num(fn(xs, ys).statistic)


def calibration(project, truth: dict) -> dict:
    """``truth``: {username: {"user_id", "pool", "accuracy", "left_bias", "length_bias", "seconds",
    "decided", "right", "judgments", "left_clicks"}} (cumulative, from the loop)."""
    quality = {q.annotator_id: q for q in AnnotatorQuality.objects.filter(project=project)}
    rows = []
    for username, t in sorted(truth.items()):
        q = quality.get(t["user_id"])
        true_accuracy = t["right"] / t["decided"] if t["decided"] else None
        rows.append(
            {
                "annotator": username,
                "pool": t["pool"],
                "judgments": t["judgments"],
                "true_accuracy": _num(true_accuracy),
                "set_accuracy": t["accuracy"],
                "estimated_accuracy": _num(q.estimated_accuracy) if q else None,
                "gold_accuracy": _num(q.gold_accuracy) if q else None,
                "true_position_bias": t["left_bias"] / 2,
                "estimated_position_bias": _num(q.position_bias) if q else None,
                "true_length_bias": t["length_bias"],
                "estimated_length_bias": _num(q.length_bias) if q else None,
                "true_seconds": t["seconds"],
                "estimated_seconds": _num(q.median_seconds) if q else None,
                "weight": _num(q.weight) if q else None,
            }
        )

    def col(name):
        return [r[name] for r in rows]

    errors = [abs(r["estimated_accuracy"] - r["true_accuracy"]) for r in rows
              if r["estimated_accuracy"] is not None and r["true_accuracy"] is not None]
    return {
        "annotators": rows,
        "accuracy_spearman": _corr(spearmanr, col("true_accuracy"), col("estimated_accuracy")),
        "accuracy_pearson": _corr(pearsonr, col("true_accuracy"), col("estimated_accuracy")),
        "accuracy_mean_abs_error": _num(float(np.mean(errors))) if errors else None,
        "position_bias_pearson": _corr(pearsonr, col("true_position_bias"), col("estimated_position_bias")),
        "length_bias_pearson": _corr(pearsonr, col("true_length_bias"), col("estimated_length_bias")),
        "weight_spearman": _corr(spearmanr, col("true_accuracy"), col("weight")),
    }


def utility_of_round(project, round_: int, utility) -> dict:
    """Mean hidden utility of the round's responses per model, and of the round-0 responses to the
    same prompts: ``{"by_model": {name: {"mean", "n"}}, "round0_same_prompts": {"mean", "n"},
    "prompts": n}``."""
    comparisons = list(
        Comparison.objects.filter(project=project, round=round_, is_gold=False).select_related(
            "response_a", "response_b"
        )
    )
    by_model: dict[str, list[float]] = {}
    prompts = set()
    for c in comparisons:
        prompts.add(c.prompt_id)
        for r in (c.response_a, c.response_b):
            by_model.setdefault(r.model_name or "(written)", []).append(utility(r.text))
    base = []
    if round_ > 0 and prompts:
        for c in Comparison.objects.filter(project=project, round=0, prompt_id__in=prompts).select_related(
            "response_a", "response_b"
        ):
            base += [utility(c.response_a.text), utility(c.response_b.text)]
    return {
        "by_model": {m: {"mean": _num(float(np.mean(v))), "n": len(v)} for m, v in sorted(by_model.items())},
        "round0_same_prompts": {"mean": _num(float(np.mean(base))) if base else None, "n": len(base)},
        "prompts": len(prompts),
    }


def round_report(project, round_: int, truth: dict, utility, session) -> dict:
    verdict = next((v for v in round_verdicts(project) if v["round"] == round_), None)
    return {
        "round": round_,
        "judgments": session.judgments,
        "abandoned": session.abandoned,
        "calibration": calibration(project, truth),
        "utility": utility_of_round(project, round_, utility),
        "verdict": verdict,
    }
