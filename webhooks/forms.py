from __future__ import annotations

from django import forms

from training.models import Run
from webhooks.models import SUBSCRIBABLE


class CreateWebhookForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="What receives it, e.g. 'CI trigger'.")
    url = forms.CharField(max_length=2000, label="URL",
                          help_text="https://… (http://127.0.0.1 or localhost only in development).")
    events = forms.MultipleChoiceField(choices=[(e.value, e.label) for e in SUBSCRIBABLE],
                                       widget=forms.CheckboxSelectMultiple)
    run = forms.ModelChoiceField(queryset=Run.objects.order_by("name"), required=False, empty_label="every run")
    every_labels = forms.IntegerField(min_value=0, initial=0, required=False, label="Every N labels",
                                      help_text="For “every N labels on a run”.")
