from __future__ import annotations

from django import forms

from training.models import PolicyVersion


class GenerateComparisonsForm(forms.Form):
    policy = forms.ModelChoiceField(queryset=PolicyVersion.objects.all(), empty_label=None)
    prompt_count = forms.IntegerField(min_value=1, max_value=10_000, initial=16, label="Prompts")
    samples = forms.IntegerField(min_value=2, max_value=8, initial=2, label="Completions per comparison")


class StopLoopForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)
