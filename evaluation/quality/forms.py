"""Forms of the quality dashboard's admin actions."""

from __future__ import annotations

from django import forms


class WeightOverrideForm(forms.Form):
    """An admin-set annotator weight in [0, 1] replacing the computed one."""

    weight = forms.FloatField(
        min_value=0.0,
        max_value=1.0,
        widget=forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "1", "class": "weight-input"}),
        help_text="0 ignores the annotator's judgments, 1 counts them fully.",
    )

    def clean_weight(self) -> float:
        value = self.cleaned_data["weight"]
        if value != value:  # NaN
            raise forms.ValidationError("Enter a number between 0 and 1.")
        return float(value)
