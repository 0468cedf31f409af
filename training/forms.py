"""Forms of the training pages. The run-settings form is built from the config
dataclasses (training/ml/configs.py): one field per config field, its doc as help text,
its declared range as the input's min/max and its check, and the dataclass's own
validation as the form's, so the page, the API, the command line and a pinned job accept
exactly the same values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from django import forms
from django.conf import settings

from training.ml.base_model import is_hf_model_dir
from training.ml.configs import Bounds, FieldSpec, StringCheck, bounds_of, field_specs
from training.ml.engines import setting_refusal as engine_setting_refusal
from training.ml.methods import METHODS, method_named
from training.ml.quantization import setting_refusal as quantization_setting_refusal
from training.ml.reward_training import RewardTrainingConfig
from training.models import PolicyVersion, Run
from training.recipes import RECIPES, default_recipe_for
from training.services.evaluation import lineage_versions
from training.services.runs import METHOD_CONFIG, REWARD_CONFIG, RunSettings, SettingsRefused, check_settings_change

METHOD_CHOICES = [(m.name, f"{m.title}: {m.summary}") for m in METHODS.values()]
RECIPE_CHOICES = [(r.name, f"{r.title} ({' → '.join(r.stages)})") for r in RECIPES.values()]
METHOD_PREFIX, REWARD_PREFIX = "method__", "reward__"


def refusing(refusal) -> list:
    """A form validator from a config's refusal (a message or None), so that the page
    says what the API and the command line say."""
    def validate(value) -> None:
        if value is not None and (why := refusal(value)):
            raise forms.ValidationError(why)
    return [validate]


def number_field(kind: type, name: str, bounds: Bounds, **common) -> forms.Field:
    """An int or float input with the declared range as its min and max."""
    attrs = {key: value for key, value in (("min", bounds.low), ("max", bounds.high)) if value is not None}
    field_class = forms.IntegerField if kind is int else forms.FloatField
    return field_class(widget=forms.NumberInput(attrs=attrs),
                       validators=refusing(lambda value: bounds.refusal(name, value)), **common)


def form_field(spec: FieldSpec, initial) -> forms.Field:
    """The Django field for one config field."""
    common = {"required": not spec.optional, "help_text": spec.doc, "initial": initial, "label": spec.name}
    if spec.choices is not None:
        return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
    if spec.kind is bool:
        return forms.BooleanField(**{**common, "required": False})
    if spec.kind in (int, float):
        return number_field(spec.kind, spec.name, spec.bounds, **common)
    check: StringCheck | None = spec.check
    return forms.CharField(max_length=200, validators=refusing(check) if check else [], **common)


RUN_SETTING_FIELDS = {field.name: field for field in dataclasses.fields(RunSettings)}


def run_setting_field(name: str, help_text: str) -> forms.Field:
    """A whole-number loop setting with the range RunSettings declares for it."""
    return number_field(int, name, bounds_of(RUN_SETTING_FIELDS[name]), help_text=help_text)


class RunSettingsForm(forms.Form):
    """A run's settings. Changing the method resets its config to the new method's
    defaults (the old method's fields mean nothing to it), and its recipe to the new
    method's default recipe unless the same submit picks another recipe
    (`recipe_switched` then names the new one, for the page to say so)."""

    recipe_switched: str | None = None

    method = forms.ChoiceField(choices=METHOD_CHOICES, help_text="How rounds update the policy.")
    recipe = forms.ChoiceField(choices=RECIPE_CHOICES, help_text="The stages each round walks.")
    query_selection = forms.ChoiceField(choices=Run.QuerySelection.choices,
                                        help_text="How new comparisons are ordered in the queue.")
    update_prompts = run_setting_field("update_prompts", "Prompts per policy update.")
    comparison_prompts = run_setting_field("comparison_prompts", "Prompts that get new comparisons each round.")
    auto_loop = forms.BooleanField(required=False, help_text="Start a round by itself after enough new labels.")
    loop_min_labels = run_setting_field("loop_min_labels", "New labels per automatic round.")
    reward_auto_train_labels = run_setting_field(
        "reward_auto_train_labels", "Train a reward model by itself after this many new labels (0: off).")
    precision = forms.ChoiceField(choices=Run.Precision.choices,
                                  help_text="Of every model its jobs load and train; LoRA adapters train in fp32. "
                                            "Jobs already queued keep theirs.")
    gradient_checkpointing = forms.ChoiceField(
        choices=Run.GradientCheckpointing.choices,
        help_text="In policy updates: recompute activations in the backward pass instead of keeping them (about "
                  "a layer's activations instead of every layer's, a third more compute); off while sampling.")

    sampling_engine = forms.ChoiceField(
        choices=Run.SamplingEngine.choices,
        help_text="What samples answers: comparisons, evaluation, best-of-N, and with vLLM GRPO's, RLOO's and "
                  "online DPO's rollouts (TRL's colocate mode); PPO's rollouts stay on transformers.")
    frozen_quantization = forms.ChoiceField(
        choices=Run.FrozenQuantization.choices,
        help_text="4-bit loading of the reward model and of the base under the trained adapter (which, adapter "
                  "off, is the KL reference). Sampling policies stay in the run's precision.")

    def __init__(self, run: Run, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        for name in ("method", "recipe", "query_selection", "update_prompts", "comparison_prompts", "auto_loop",
                     "loop_min_labels", "reward_auto_train_labels", "precision",
                     "gradient_checkpointing", "sampling_engine", "frozen_quantization"):
            self.fields[name].initial = getattr(run, name)
        # The stored values as they are, unchecked: a run saved before a range existed
        # must still show its page, with the value to correct in its field.
        for spec in field_specs(method_named(run.method).config_class):
            if spec.name != "seed":  # each job seeds itself (with its id)
                self.fields[METHOD_PREFIX + spec.name] = form_field(spec, run.method_config.get(spec.name,
                                                                                                spec.default))
        for spec in field_specs(RewardTrainingConfig):
            if spec.name != "seed":
                self.fields[REWARD_PREFIX + spec.name] = form_field(spec, run.reward_config.get(spec.name,
                                                                                                 spec.default))

    def loop_fields(self):
        return [self[name] for name in self.fields if not name.startswith((METHOD_PREFIX, REWARD_PREFIX))]

    def method_fields(self):
        return [self[name] for name in self.fields if name.startswith(METHOD_PREFIX)]

    def reward_fields(self):
        return [self[name] for name in self.fields if name.startswith(REWARD_PREFIX)]

    @property
    def method_changed(self) -> bool:
        return self.is_bound and self.data.get("method") != self.run.method

    def clean_sampling_engine(self) -> str:
        if why := engine_setting_refusal(self.cleaned_data["sampling_engine"]):
            raise forms.ValidationError(why)
        return self.cleaned_data["sampling_engine"]

    def clean_frozen_quantization(self) -> str:
        if why := quantization_setting_refusal(self.cleaned_data["frozen_quantization"]):
            raise forms.ValidationError(why)
        return self.cleaned_data["frozen_quantization"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data  # each field's own errors, all of them; the rules joining fields need them all
        method, recipe = data["method"], data["recipe"]
        if method != self.run.method:
            method_config = {}  # the new method's defaults
            if recipe == self.run.recipe and recipe != default_recipe_for(method):
                # Left as it was: the recipe that fits the new method (a DPO run on rlhf
                # would train a reward model every round that it never reads).
                recipe = self.recipe_switched = default_recipe_for(method)
        else:
            method_config = {name.removeprefix(METHOD_PREFIX): value for name, value in data.items()
                             if name.startswith(METHOD_PREFIX)}
        reward_config = {name.removeprefix(REWARD_PREFIX): value for name, value in data.items()
                         if name.startswith(REWARD_PREFIX)}
        try:
            self.settings = check_settings_change(RunSettings(
                method=method, method_config=method_config, reward_config=reward_config, recipe=recipe,
                query_selection=data["query_selection"], update_prompts=data["update_prompts"],
                comparison_prompts=data["comparison_prompts"], auto_loop=data["auto_loop"],
                loop_min_labels=data["loop_min_labels"], reward_auto_train_labels=data["reward_auto_train_labels"],
                precision=data["precision"], gradient_checkpointing=data["gradient_checkpointing"],
                sampling_engine=data["sampling_engine"], frozen_quantization=data["frozen_quantization"],
            ))
        except SettingsRefused as refused:
            for setting, message in refused.fields.items():
                name = self.field_of(setting)
                self.add_error(name if name in self.fields else None, message)
        return data

    @staticmethod
    def field_of(setting: str) -> str:
        """The form field of a SettingsRefused key: `method.beta` → `method__beta`."""
        group, _, name = setting.partition(".")
        prefix = {METHOD_CONFIG: METHOD_PREFIX, REWARD_CONFIG: REWARD_PREFIX}.get(group)
        return prefix + name if prefix and name else setting


class CreateRunForm(forms.Form):
    name = forms.CharField(max_length=100)
    base_model_dir = forms.CharField(max_length=1000, label="Base model directory",
                                     help_text="Any local Hugging Face model directory.")
    method = forms.ChoiceField(choices=METHOD_CHOICES)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model_dir"].initial = str(settings.PREFLOOP_BASE_MODEL_DIR)

    def clean_base_model_dir(self) -> str:
        # Caught here rather than by the first job, minutes later on a worker.
        path = Path(self.cleaned_data["base_model_dir"]).expanduser()
        if not is_hf_model_dir(path):
            raise forms.ValidationError(f"{path} is not a Hugging Face model directory (no config.json there)")
        return str(path.resolve())


class GuidelinesForm(forms.Form):
    guidelines = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
        help_text="Markdown, shown above each comparison of this run on the labeling page (no HTML runs).")


class BranchRunForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Name of the new run.")


class StartRoundForm(forms.Form):
    recipe = forms.ChoiceField(choices=[("", "the run's recipe")] + RECIPE_CHOICES, required=False)


class StartBakeOffForm(forms.Form):
    methods = forms.MultipleChoiceField(
        choices=METHOD_CHOICES, widget=forms.CheckboxSelectMultiple, label="Methods",
        help_text="Each trains a candidate from the head with its default config (the run's own config for the "
                  "run's method), on the same labels and reward model.")


class GenerateComparisonsForm(forms.Form):
    policy = forms.ModelChoiceField(queryset=PolicyVersion.objects.none(), empty_label=None)
    prompt_count = forms.IntegerField(min_value=1, max_value=10_000, initial=16, label="Prompts")
    samples = forms.IntegerField(min_value=2, max_value=8, initial=2, label="Completions per comparison")

    def __init__(self, run: Run, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = PolicyVersion.objects.filter(pk__in=[v.pk for v in lineage_versions(run)])
        self.fields["policy"].initial = run.head_id


class ExternalCompletionsForm(forms.Form):
    file = forms.FileField(help_text='JSONL: {"prompt": ..., "answers": {"system name": "answer", ...}} per line.')
    against_version = forms.ModelChoiceField(
        queryset=PolicyVersion.objects.none(), required=False, empty_label="none: compare the systems only",
        label="Also answered by",
        help_text="A version of the run that answers the same prompts (on the gpu queue); its answers are "
                  "compared with the systems'.",
    )

    def __init__(self, run: Run, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["against_version"].queryset = PolicyVersion.objects.filter(
            pk__in=[v.pk for v in lineage_versions(run)])
        self.fields["against_version"].initial = run.head_id


class StopLoopForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)


class DatasetUploadForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="How runs will refer to it; unique.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    file = forms.FileField(help_text="JSONL: TRL standard or conversational (with or without an explicit prompt), "
                                     "or Anthropic HH-RLHF; optional score_chosen / score_rejected.")


class RunDatasetForm(forms.Form):
    """Which imported dataset a run trains on, for what, and how much of it."""

    dataset = forms.ModelChoiceField(queryset=None, help_text="Ready datasets.")
    weight = forms.FloatField(initial=1.0, min_value=0.001, max_value=10.0,
                              help_text="Share of its pairs each training uses: 0.25 a random quarter, 2 each twice.")
    for_reward_model = forms.BooleanField(required=False, initial=True, label="Reward model")
    for_methods = forms.BooleanField(required=False, initial=True, label="DPO / SFT methods")

    def __init__(self, *args, **kwargs):
        from labeling.models import PreferenceDataset

        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = PreferenceDataset.objects.filter(status=PreferenceDataset.Status.READY)
        self.fields["dataset"].label_from_instance = lambda dataset: f"{dataset.name} ({dataset.pair_count} pairs)"
