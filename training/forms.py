"""Forms of the training pages. They parse input; ``training.services`` validates and acts."""

from __future__ import annotations

import json

from django import forms
from django.db.models import Q

from evaluation.models import Export
from evaluation.models import JobStatus as ExportStatus

from .config import DPO_LOSS_TYPES
from .models import ModelKind, ModelVersion, Recipe
from .services.hyperparameters import train_config_defaults

#: TrainConfig fields offered as form inputs (the rest through "Other hyperparameters").
COMMON_FIELDS = (
    ("max_steps", forms.IntegerField, {"min_value": 1, "label": "Max steps (per phase)"}),
    ("epochs", forms.FloatField, {"min_value": 0.01, "label": "Epochs (without max steps)"}),
    ("lr", forms.FloatField, {"min_value": 0, "label": "Learning rate"}),
    ("batch_size", forms.IntegerField, {"min_value": 1, "label": "Batch size (pairs)"}),
    ("grad_accum", forms.IntegerField, {"min_value": 1, "label": "Gradient accumulation"}),
    ("beta", forms.FloatField, {"min_value": 0, "label": "DPO beta"}),
    ("max_length", forms.IntegerField, {"min_value": 2, "label": "Max length (tokens)"}),
    ("max_prompt_length", forms.IntegerField, {
        "min_value": 1, "label": "Max prompt length (tokens)",
        "help_text": "A longer prompt keeps its last tokens. Empty: a pair longer than max length keeps as "
                     "much of its prompt's end as the responses leave room for, at least half of max length."}),
    ("seed", forms.IntegerField, {"label": "Seed"}),
)


class ExportChoiceField(forms.ModelChoiceField):
    """Exports labelled with what a launch checks: pairs, weight sum, effective sample size."""

    def label_from_instance(self, export) -> str:
        from .services.rows import export_weight_stats

        name = f"#{export.pk} {export.name}".strip()
        stats = export_weight_stats(export)
        if stats is None:
            return f"{name} ({export.n_rows} rows)"
        return (f"{name} — {stats.pairs} training pairs, weight sum {stats.weight_sum:.3g}, "
                f"effective size {stats.effective_size:.1f}")


def _model_choices(project, kind=ModelKind.POLICY):
    return ModelVersion.objects.filter(Q(project__isnull=True) | Q(project=project), kind=kind).order_by("name")


class LaunchRunForm(forms.Form):
    recipe = forms.ChoiceField(choices=Recipe.choices, initial=Recipe.SFT_DPO)
    base_model = forms.ModelChoiceField(queryset=ModelVersion.objects.none(), label="Base model")
    reward_model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.none(),
        required=False,
        label="Reward model (PPO)",
        empty_label="none (recipe ppo needs one; sft+dpo+ppo trains its own without)",
        help_text="A registered reward model (the output of an rm run) with the base model's tokenizer.",
    )
    export = ExportChoiceField(
        queryset=Export.objects.none(),
        required=False,
        label="Export",
        empty_label="Build a fresh export now (default settings)",
        help_text="A built calibrated export of this project, or a fresh one built at launch. The effective "
        "size is Kish's (Σw)²/Σw² of its training pairs' weights: how many equally weighted pairs they are "
        "worth. A launch is refused when it is below min_pairs (e.g. when excluded or zero-weight annotators "
        "decided most pairs); use_weights=false trains every pair at weight 1.",
    )
    loss_type = forms.ChoiceField(
        choices=[("", "default")] + [(t, t) for t in DPO_LOSS_TYPES], required=False, label="DPO loss"
    )
    lora = forms.BooleanField(required=False, label="LoRA adapter instead of full fine-tuning")
    device = forms.ChoiceField(
        choices=[("", "default (auto)"), ("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")], required=False
    )
    extra = forms.CharField(
        required=False,
        label="Other hyperparameters (JSON)",
        widget=forms.Textarea(
            attrs={"rows": 3, "class": "mono", "placeholder": '{"lora_r": 16, "warmup_steps": 10}'}
        ),
        help_text="Any TrainConfig field: loss variants, LoRA rank/alpha/targets, precision, checkpointing…",
    )

    def __init__(self, *args, project=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.project = project
        defaults = train_config_defaults()
        models = _model_choices(project)
        self.fields["base_model"].queryset = models
        self.fields["base_model"].initial = models.filter(name="tiny-default").first() or models.first()
        self.fields["reward_model"].queryset = _model_choices(project, ModelKind.REWARD)
        self.fields["export"].queryset = Export.objects.filter(project=project, status=ExportStatus.SUCCEEDED)
        for name, field_cls, kw in COMMON_FIELDS:
            default = defaults.get(name)
            self.fields[name] = field_cls(
                required=False,
                **kw,
                widget=(
                    forms.NumberInput(
                        attrs={"placeholder": "default" if default is None else default, "step": "any"}
                    )
                ),
            )
        # order: what to train, then the knobs
        order = (
            ["recipe", "base_model", "reward_model", "export"]
            + [n for n, _, _ in COMMON_FIELDS]
            + ["loss_type", "lora", "device", "extra"]
        )
        self.order_fields(order)

    def clean_extra(self):
        text = (self.cleaned_data.get("extra") or "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError('a JSON object of TrainConfig fields, e.g. {"lora_r": 16}')
        return value

    def hyperparameters(self) -> dict:
        """The TrainConfig values the admin set (empty inputs keep the defaults)."""
        data = self.cleaned_data
        hp = dict(data.get("extra") or {})
        for name, _, _ in COMMON_FIELDS:
            if data.get(name) is not None:
                hp[name] = data[name]
        if data.get("loss_type"):
            hp["loss_type"] = data["loss_type"]
        if data.get("lora"):
            hp["lora"] = True
        if data.get("device"):
            hp["device"] = data["device"]
        if data.get("reward_model"):
            hp["reward_model"] = data["reward_model"].name
        return hp


class RegisterModelForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Unique; used as the model name of its responses.")
    path = forms.CharField(
        max_length=1000,
        label="Folder",
        help_text="Absolute path of a local Hugging Face model (or PEFT adapter) folder.",
    )
    parent = forms.ModelChoiceField(
        queryset=ModelVersion.objects.all(),
        required=False,
        help_text="The model it was trained from, if any.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args, roots=None, parents=None, **kwargs):
        """``roots``: the folders the path must lie in (``services.registry.model_roots()``), shown in the
        path's help; None for a superuser, who may register any folder. ``parents``: the models the
        user may see (``services.registry.visible_models``)."""
        super().__init__(*args, **kwargs)
        if parents is not None:
            self.fields["parent"].queryset = parents.order_by("name")
        if roots is not None:
            self.fields["path"].help_text += f" It must lie inside {', '.join(map(str, roots)) or '(none)'}."


class SampleForm(forms.Form):
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=512, initial=48)


class SampleRoundForm(forms.Form):
    n_prompts = forms.IntegerField(min_value=1, max_value=10_000, initial=20, label="Prompts")
    against = forms.ChoiceField(
        choices=[
            ("parent", "the previous model (head to head: new vs. the model it was trained from)"),
            ("self", "itself (two samples of the new model: the next DPO round's pairs)"),
            ("model", "a fixed reference model version"),
        ],
        initial="parent",
        label="Compare against",
    )
    compare_model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.none(),
        required=False,
        label="Reference model version",
        help_text="With 'a fixed reference model': e.g. the base model every round is measured against.",
    )

    def __init__(self, *args, project=None, **kwargs):
        """``project``: the other versions offered are this project's and the shared ones."""
        super().__init__(*args, **kwargs)
        self.fields["compare_model"].queryset = _model_choices(project)

    def clean(self):
        data = super().clean()
        if data.get("against") == "model" and not data.get("compare_model"):
            self.add_error("compare_model", "choose the model version to compare against")
        return data
    max_new_tokens = forms.IntegerField(min_value=1, max_value=512, initial=64)
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=0.8)
