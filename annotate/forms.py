"""Forms of the project pages. They parse and validate input; the views call the services."""
from __future__ import annotations

from django import forms

from .models import MAX_ASSIGNMENT_TIMEOUT_S, MAX_ROUND, Membership, PairOrder, Pool, Project, Role, Strength
from .queue import SHOWN_CHOICES


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = [
            "name",
            "instructions",
            "overlap",
            "gold_rate",
            "allow_ties",
            "assignment_timeout_s",
            "show_accuracy_after",
            "license",
            "pair_order",
        ]
        labels = {
            "instructions": "Instructions (Markdown)",
            "overlap": "Overlap k",
            "gold_rate": "Gold share",
            "allow_ties": "Ties allowed",
            "assignment_timeout_s": "Assignment timeout (seconds)",
            "show_accuracy_after": "Show annotators their gold accuracy after",
            "pair_order": "Pair order",
        }
        help_texts = {
            "overlap": "How many annotators judge each comparison.",
            "gold_rate": "Share of served items that are gold (calibration) tasks, 0 to 1.",
            "show_accuracy_after": "Number of gold tasks; leave empty to never show it.",
            "license": "License of the collected judgments, e.g. CC-BY-4.0.",
            "pair_order": "Which open comparisons annotators get first. The active orders serve first the "
            "comparisons whose outcome the latest model could least predict (smallest implicit-reward margin), "
            "whose vote would tell it most given the votes so far (expected information), "
            "or on which the pools disagree most; a worker computes the priorities when you choose one, "
            "after each training run (margin, information) or statistics recomputation (disagreement), "
            "and on demand. Measured in the simulator, the margin order saves judgments when there are "
            "many more open comparisons than judgments to come (docs/training.md).",
        }
        widgets = {
            "instructions": forms.Textarea(attrs={"rows": 10, "class": "mono"}),
            "gold_rate": forms.NumberInput(attrs={"step": "0.01", "min": "0", "max": "1"}),
            "overlap": forms.NumberInput(attrs={"min": "1", "max": "50"}),
            "assignment_timeout_s": forms.NumberInput(
                attrs={"min": "30", "max": str(MAX_ASSIGNMENT_TIMEOUT_S), "step": "30"}
            ),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # a form posted without it (an older client) keeps the project's order
        self.fields["pair_order"].required = False

    def clean_pair_order(self):
        return self.cleaned_data.get("pair_order") or self.instance.pair_order or PairOrder.ARRIVAL

    def clean_overlap(self):
        k = self.cleaned_data["overlap"]
        if not 1 <= k <= 50:
            raise forms.ValidationError("Overlap must be between 1 and 50.")
        return k

    def clean_gold_rate(self):
        rate = self.cleaned_data["gold_rate"]
        if not 0.0 <= rate <= 1.0:
            raise forms.ValidationError("The gold share is a fraction between 0 and 1.")
        return rate

    def clean_assignment_timeout_s(self):
        t = self.cleaned_data["assignment_timeout_s"]
        if t < 30:
            raise forms.ValidationError("Give annotators at least 30 seconds.")
        if t > MAX_ASSIGNMENT_TIMEOUT_S:
            raise forms.ValidationError(f"At most {MAX_ASSIGNMENT_TIMEOUT_S} seconds (a week).")
        return t


class PoolForm(forms.ModelForm):
    attributes = forms.JSONField(
        required=False,
        initial=dict,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "placeholder": '{"region": "EU", "language": "en"}'}),
        help_text='A JSON object, e.g. {"region": "EU", "language": "en", "expertise": "software"}.',
    )

    class Meta:
        model = Pool
        fields = ["name", "attributes", "target_share"]
        labels = {"target_share": "Target share"}
        help_texts = {"target_share": "Share of the judgments this pool should contribute, 0 to 1."}
        widgets = {"target_share": forms.NumberInput(attrs={"step": "0.01", "min": "0", "max": "1"})}

    def __init__(self, *args, project: Project, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = project
        self.instance.project = project

    def clean_attributes(self):
        value = self.cleaned_data.get("attributes")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError('Attributes must be a JSON object such as {"region": "EU"}.')
        return value

    def clean_target_share(self):
        share = self.cleaned_data["target_share"]
        if not 0.0 <= share <= 1.0:
            raise forms.ValidationError("The target share is a fraction between 0 and 1.")
        return share

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        clash = Pool.objects.filter(project=self.project, name__iexact=name).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("This project already has a pool with that name.")
        return name


class PoolChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Pool) -> str:
        return obj.name


def _pool_field(project: Project) -> forms.ModelChoiceField:
    return PoolChoiceField(queryset=project.pools.all(), required=False, empty_label="— no pool —")


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="An existing user account.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ANNOTATOR)

    def __init__(self, *args, project: Project, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = project
        self.fields["pool"] = _pool_field(project)

    def clean_username(self):
        from .services import Refused, user_to_add

        username = self.cleaned_data["username"].strip()
        try:
            self.cleaned_data["user"] = user_to_add(self.project, username)
        except Refused as exc:
            raise forms.ValidationError(str(exc)) from None
        return username


class MemberChangeForm(forms.ModelForm):
    """Role and pool of one member (exclusion has its own buttons). ``form_id`` ties the
    inputs, rendered in table cells, to the row's <form> element."""

    class Meta:
        model = Membership
        fields = ["role", "pool"]

    def __init__(self, *args, project: Project, form_id: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"] = _pool_field(project)
        if form_id:
            for f in self.fields.values():
                f.widget.attrs["form"] = form_id
                f.widget.attrs["aria-label"] = f.label


class ImportForm(forms.Form):
    FORMATS = [("", "Detect from the file name"), ("jsonl", "JSON Lines"), ("csv", "CSV")]

    file = forms.FileField(help_text="JSONL or CSV. The whole file is checked before anything is imported.")
    fmt = forms.ChoiceField(choices=FORMATS, required=False, label="Format")
    round = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_ROUND, help_text="Model round of these responses; empty = the project's current round."
    )
    allow_empty_responses = forms.BooleanField(
        required=False,
        label="Allow empty responses",
        help_text="Import lines whose response is empty (a model that said nothing); prompts may never be empty.",
    )
    KINDS = [
        ("comparisons", "Comparisons (pairs to judge; TRL chosen/rejected files too)"),
        ("judgments", "Votes already collected (one judgment per line, with annotator_id and label)"),
    ]
    kind = forms.ChoiceField(choices=KINDS, initial="comparisons", required=False, label="The file holds")
    votes_source = forms.CharField(
        required=False,
        max_length=100,
        label="Import its preferences as votes of source",
        help_text="Comparisons only: a chosen/rejected file's own preference becomes the vote of this "
        "source (annotator “source:NAME” in its own pool), weighed and exported like any annotator.",
    )
    token = forms.CharField(required=False, widget=forms.HiddenInput, max_length=64)

    def clean(self):
        data = super().clean()
        data["kind"] = data.get("kind") or "comparisons"
        if data.get("kind") == "judgments" and (data.get("votes_source") or "").strip():
            self.add_error("votes_source", "Votes files name their annotators; leave this empty for them.")
        return data


class _ShownChoiceForm(forms.Form):
    """A judgment's fields in the terms shown on screen (left/right)."""

    choice = forms.ChoiceField(choices=[(c, c) for c in SHOWN_CHOICES])
    strength = forms.TypedChoiceField(
        choices=[("", "")] + [(str(v), label) for v, label in Strength.choices],
        coerce=int,
        empty_value=None,
        required=False,
    )
    rationale = forms.CharField(required=False, max_length=5000)


class RevisionForm(_ShownChoiceForm):
    """A change to the annotator's previous judgment, in shown terms (left/right)."""

    judgment = forms.IntegerField(min_value=1)


class JudgmentForm(_ShownChoiceForm):
    """The annotator's submit, in the terms shown on screen (left/right)."""

    assignment = forms.IntegerField(min_value=1)
    seconds = forms.FloatField(required=False, min_value=0)

    def clean_seconds(self):
        s = self.cleaned_data.get("seconds")
        return s if s and s > 0 else None
