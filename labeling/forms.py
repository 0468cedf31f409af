from __future__ import annotations

from django import forms


class PromptImportForm(forms.Form):
    file = forms.FileField(
        help_text='JSONL with {"prompt": ...} or {"messages": [...]} per line, or CSV with a "prompt" column.'
    )
