"""The export form of the UI. Validation is :func:`evaluation.export.options.clean_options`'s (the
same as the API's and the command's); the form only turns widgets into its input."""

from __future__ import annotations

from django import forms

from annotate.models import Comparison, Pool, Project

from ..stats.aggregation import METHODS
from .options import DEFAULT_FORMATS, ExportError, clean_options

METHOD_LABELS = {
    "dawid_skene": "Dawid–Skene (per-annotator confusion matrices)",
    "dawid_skene_debiased": "Dawid–Skene, position-debiased",
    "gold_weighted": "Gold-weighted vote",
    "majority": "Majority vote (weighted by annotator weight)",
}
PAIR_FORMATS = [
    ("jsonl", "JSONL (TRL preference format)"),
    ("parquet", "Parquet"),
    ("hf", "Hugging Face datasets folder"),
    ("csv", "CSV (spreadsheets)"),
]


class ExportForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="A label for this export (optional).")
    rounds = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked = every round.",
    )
    pools = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Judgments made in these pools only. None ticked = every pool.",
    )
    method = forms.ChoiceField(
        choices=[(m, METHOD_LABELS.get(m, m)) for m in METHODS],
        initial="dawid_skene",
        label="Aggregation method",
    )
    pool_balanced = forms.BooleanField(
        required=False, label="Balance pools (each pool weighs the same per comparison)"
    )
    min_confidence = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        initial=0.0,
        label="Minimum confidence",
        widget=forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "1"}),
        help_text="Drop comparisons whose aggregated label is less certain than this (0–1).",
    )
    include_ties = forms.BooleanField(required=False, label="Include ties (label “tie”, p_chosen 0.5)")
    include_both_bad = forms.BooleanField(required=False, label="Include both-bad (label “both_bad”)")
    test_fraction = forms.FloatField(
        min_value=0.0,
        max_value=0.95,
        initial=0.1,
        label="Test fraction",
        widget=forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "0.95"}),
        help_text="Share of prompts in the test split (split by prompt: no prompt on both sides).",
    )
    seed = forms.IntegerField(min_value=0, initial=0, label="Split seed")
    formats = forms.MultipleChoiceField(
        choices=PAIR_FORMATS,
        initial=DEFAULT_FORMATS,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Pair formats",
    )
    include_judgments = forms.BooleanField(
        required=False,
        label="Include per-annotator judgments (judgments.jsonl)",
        help_text="One row per judgment with a pseudonymous annotator id.",
    )
    include_rationales = forms.BooleanField(
        required=False,
        label="Include free-text rationales",
        help_text="Off by default: free text may identify people. Needs the judgments file.",
    )
    include_excluded = forms.BooleanField(required=False, label="Keep judgments of excluded annotators")
    include_gold = forms.BooleanField(
        required=False,
        label="Include gold comparisons and their answers",
        help_text="Admins only; such an export can be downloaded by admins only.",
    )
    stable_pseudonyms = forms.BooleanField(
        required=False,
        label="Same pseudonyms as other exports of this project",
        help_text="Off: pseudonyms are stable within this export only.",
    )
    style = forms.ChoiceField(
        choices=[
            ("auto", "Automatic (conversational when a prompt is a chat)"),
            ("standard", "Standard (strings)"),
            ("conversational", "Conversational (message lists)"),
        ],
        initial="auto",
        label="Prompt format",
    )

    def __init__(self, *args, project: Project, is_admin: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = project
        if not is_admin:
            del self.fields["include_gold"]
        rounds = sorted(
            set(Comparison.objects.filter(project=project).values_list("round", flat=True).distinct())
        )
        self.fields["rounds"].choices = [(r, f"Round {r}") for r in rounds]
        self.fields["pools"].choices = list(
            Pool.objects.filter(project=project).order_by("name").values_list("pk", "name")
        )
        self.options = None

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        raw = {k: v for k, v in data.items() if k != "formats"}
        raw["formats"] = list(data.get("formats") or [])
        if not raw["formats"] and not data.get("include_judgments"):
            raise forms.ValidationError("Choose at least one format.")
        try:
            self.options = clean_options(self.project, raw)
        except ExportError as exc:
            if exc.field in self.fields:
                self.add_error(exc.field, str(exc))
            else:
                raise forms.ValidationError(str(exc)) from None
        return data
