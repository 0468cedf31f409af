from __future__ import annotations

from django import forms

from api.services import MAX_NAME_CHARS


class CreateTokenForm(forms.Form):
    name = forms.CharField(max_length=MAX_NAME_CHARS, help_text="What it is for, e.g. 'training pipeline'.")
