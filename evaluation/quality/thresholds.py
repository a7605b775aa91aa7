"""The quality rule's knobs and flags: thresholds (each a Django setting), flag names and help.

Read by the computation (:mod:`evaluation.quality.compute`), the annotator table
(:mod:`evaluation.quality.selectors`) and the dashboard. ``docs/quality.md`` explains them.
"""

from __future__ import annotations

from django.conf import settings

# Defaults of the knobs below; each can be set in Django settings.
DEFAULTS = {
    # An annotator whose accuracy (gold posterior mean, else Dawid–Skene) is below this is flagged.
    "PREFLOOP_QUALITY_MIN_ACCURACY": 0.7,
    # ... and one whose computed weight is below this.
    "PREFLOOP_QUALITY_MIN_WEIGHT": 0.3,
    # Bootstrap replicates for the agreement intervals (overall, per pool, between pools).
    "PREFLOOP_QUALITY_BOOTSTRAP": 500,
    # Bootstrap replicates per point of the agreement-over-time series.
    "PREFLOOP_QUALITY_BOOTSTRAP_TIME": 200,
    # Bootstrap replicates for the Bradley–Terry strength intervals (per round).
    "PREFLOOP_QUALITY_BOOTSTRAP_BT": 100,
    # Gold judgments an annotator needs before their gold accuracy replaces the Dawid–Skene one.
    "PREFLOOP_QUALITY_MIN_GOLD": 10,
}

FLAG_LABELS = {
    "low_accuracy": "Low accuracy",
    "low_weight": "Low weight",
    "position_bias": "Position bias",
    "length_bias": "Length bias",
    "too_fast": "Too fast",
    "tie_heavy": "Many ties",
    "excluded": "Excluded",
}
FLAG_HELP = {
    "low_accuracy": "Accuracy (gold, else Dawid–Skene) below the threshold",
    "low_weight": "Computed weight below the threshold",
    "position_bias": "Picks the left (or right) response more than chance: the 95% interval excludes 0",
    "length_bias": "Picks the longer response more than the consensus does: the 95% interval excludes 0",
    "too_fast": "Median time per judgment implausibly short",
    "tie_heavy": "Far more ties than the project as a whole",
    "excluded": "Excluded by an admin: not served, weight 0, judgments kept",
}
#: Flags that make an annotator "below threshold" (highlighted on the dashboard).
BELOW_THRESHOLD_FLAGS = ("low_accuracy", "low_weight")


def knob(name: str):
    """The value of knob ``name`` (a key of :data:`DEFAULTS`): the Django setting, else the default."""
    return getattr(settings, name, DEFAULTS[name])
