from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from itertools import combinations
from typing import TypeVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

T = TypeVar("T")


def conversation_hash(messages: list[dict]) -> str:
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class LabeledBy(models.TextChoices):
    """Who labels a run's comparisons (training.Run.labeled_by). The labeling queue
    serves people only the comparisons of runs that people label; an experiment's arms
    are labeled by a simulated annotator with a hidden gold reward, and a person's label
    there would leak outside judgement into a measurement."""

    PEOPLE = "people", "People, through the labeling queue"
    SIMULATOR = "simulator", "A simulated annotator only (an experiment's arm)"


class Prompt(models.Model):
    """An instruction to complete: a conversation ending with a user turn. A plain-text
    prompt is stored as a one-message conversation so every consumer sees one shape."""

    messages = models.JSONField(help_text='[{"role": "user", "content": "..."}, ...]')
    content_hash = models.CharField(max_length=64, unique=True, editable=False)
    category = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=255, blank=True, help_text="File the prompt was imported from.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        text = self.text
        return text if len(text) <= 60 else text[:57] + "..."

    def save(self, *args, **kwargs):
        self.content_hash = conversation_hash(self.messages)
        super().save(*args, **kwargs)

    @property
    def text(self) -> str:
        """The final user turn: what the completions answer."""
        return self.messages[-1]["content"]

    @property
    def history(self) -> list[dict]:
        """Earlier turns of a multi-turn prompt, shown above the final one."""
        return self.messages[:-1]


class Completion(models.Model):
    """An answer to a prompt, from one of our policy versions or from a named outside
    system (another model, a human writer); exactly one of the two is set."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    policy_version = models.ForeignKey("training.PolicyVersion", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="completions")
    external_source = models.CharField(max_length=200, blank=True,
                                       help_text="Name of the outside system that wrote it.")
    text = models.TextField()
    ended = models.BooleanField(default=True, help_text="False when generation hit the token limit before EOS.")
    token_ids = models.JSONField(
        null=True, blank=True,
        help_text="The answer's tokens as the policy generated them (EOS excluded); the reward model reads these. "
                  "Empty for text from elsewhere, which is tokenized.",
    )
    generation_settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(policy_version__isnull=False) & Q(external_source=""))
                | (Q(policy_version__isnull=True) & ~Q(external_source="")),
                name="completion_has_one_origin",
            ),
        ]

    def __str__(self) -> str:
        return f"completion {self.pk} of prompt {self.prompt_id} by {self.origin}"

    @property
    def scored_text(self) -> tuple:
        """(prompt messages, text, ended, generated token ids) as the reward model reads it."""
        return (self.prompt.messages, self.text, self.ended, self.token_ids)

    @property
    def origin(self) -> str:
        """Who wrote it: `v3` or the outside system's name."""
        return f"v{self.policy_version.number}" if self.policy_version_id else self.external_source


class Comparison(models.Model):
    """Two or more completions of one prompt, shown in a stored (shuffled) order."""

    class Source(models.TextChoices):
        INITIAL = "initial", "Initial policy samples"
        POLICY = "policy", "Samples of one policy version"
        CROSS_VERSION = "cross_version", "New version vs an earlier one"
        IMPORTED = "imported", "Imported"
        # Candidates of a bake-off (and its start) on the run's evaluation prompts: they
        # measure methods and train nothing (Run.label_scope leaves them out).
        BAKEOFF = "bakeoff", "Bake-off candidates"

    run = models.ForeignKey("training.Run", on_delete=models.PROTECT, related_name="comparisons",
                            help_text="The run whose reward models and methods learn from its labels.")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    completions = models.ManyToManyField(Completion, through="ComparisonItem", related_name="comparisons")
    source = models.CharField(max_length=32, choices=Source.choices, default=Source.POLICY)
    priority = models.FloatField(default=0.0, help_text="Higher is served first.")
    labels_needed = models.PositiveSmallIntegerField(
        default=1, help_text="How many annotators should label it; above 1 measures agreement."
    )
    # Denormalized count of non-skip labels, kept by the label services so the queue
    # query does not aggregate the whole label table on every request.
    label_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The queue's order over the comparisons still open only: a request walks from
        # the first open one, not past every comparison labeled so far.
        indexes = [models.Index(fields=["-priority", "id"], condition=Q(label_count__lt=F("labels_needed")),
                                name="comparison_open_queue")]

    def __str__(self) -> str:
        return f"comparison {self.pk}"

    def ordered_completions(self) -> list[Completion]:
        return [item.completion for item in self.items.select_related("completion").order_by("position")]


class ComparisonItem(models.Model):
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField(help_text="0 is shown leftmost.")

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "position"], name="one_completion_per_position"),
            models.UniqueConstraint(fields=["comparison", "completion"], name="completion_once_per_comparison"),
        ]


class Label(models.Model):
    """One annotator's judgement on a comparison. Choices refer to display positions:
    `a` is the leftmost completion, `b` the next; a ranking lists positions best first."""

    class Origin(models.TextChoices):
        HUMAN = "human", "A person"
        SIMULATED = "simulated", "A simulated annotator"
        IMPORTED = "imported", "Imported"

    class Choice(models.TextChoices):
        A = "a", "Left is better"
        B = "b", "Right is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"
        SKIP = "skip", "Skipped"
        RANKING = "ranking", "Ranking"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="labels")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labels")
    choice = models.CharField(max_length=16, choices=Choice.choices)
    ranking = models.JSONField(null=True, blank=True, help_text="Display positions, best first (K > 2 only).")
    strength = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(3)],
        help_text="1 slightly better, 3 much better.",
    )
    rationale = models.TextField(blank=True)
    active_seconds = models.FloatField(default=0.0, help_text="Time the annotator was active on the page.")
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.HUMAN,
                              help_text="Statistics about people count human labels only.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="one_label_per_annotator"),
        ]
        indexes = [models.Index(fields=["annotator", "-created_at"], name="label_by_annotator_recent")]

    def __str__(self) -> str:
        return f"{self.annotator} on {self.comparison}: {self.choice}"

    @property
    def counts_as_label(self) -> bool:
        return self.choice != self.Choice.SKIP

    def preference_pairs(self, completions: list[Completion]) -> list[tuple[Completion, Completion]]:
        """(chosen, rejected) pairs this label implies, given the comparison's completions
        in display order. Ties, both-bad and skips state no preference and give none."""
        return implied_pairs(self.choice, self.ranking, completions)


def implied_pairs(choice: str, ranking: list[int] | None, answers: Sequence[T]) -> list[tuple[T, T]]:
    """(chosen, rejected) pairs a label's choice (and ranking) implies among the
    comparison's answers in display order: completions, or any rows that stand for them."""
    if choice == Label.Choice.A:
        return [(answers[0], answers[1])]
    if choice == Label.Choice.B:
        return [(answers[1], answers[0])]
    if choice == Label.Choice.RANKING:
        ranked = [answers[position] for position in ranking]
        return list(combinations(ranked, 2))  # best-first, so each pair is (better, worse)
    return []


class Assignment(models.Model):
    """A lease: while it has not expired, the comparison is reserved for this annotator."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    returned = models.BooleanField(default=False, help_text="Given back by an undo; answered before another undo.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="one_lease_per_annotator"),
        ]
        indexes = [models.Index(fields=["comparison", "expires_at"], name="assignment_active")]

    def __str__(self) -> str:
        return f"{self.annotator} holds {self.comparison} until {self.expires_at:%H:%M:%S}"


class PreferenceDataset(models.Model):
    """Preference pairs someone else collected (TRL formats, HH-RLHF, UltraFeedback),
    imported as a whole under a name. Its pairs have origin "imported": they are not
    labels, so they never count as people anywhere; a run chooses whether its reward
    model and its pair-learning methods train on them (training.RunDataset). A dataset
    is usable only once its import finished: a failed import leaves no pairs behind."""

    class Status(models.TextChoices):
        IMPORTING = "importing"
        READY = "ready"
        FAILED = "failed"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    source_filename = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IMPORTING)
    error = models.TextField(blank=True, help_text="Why the import failed, naming the line.")
    pair_count = models.PositiveIntegerField(default=0)
    skipped_identical = models.PositiveIntegerField(default=0, help_text="Lines whose two answers were the same.")
    skipped_ties = models.PositiveIntegerField(default=0, help_text="Lines whose two scores were equal.")
    formats = models.JSONField(default=list, blank=True, help_text="The file formats its lines were in.")
    strength_cutpoints = models.JSONField(
        default=list, blank=True,
        help_text="Score gaps separating strength 1, 2 and 3 (terciles of the file's gaps); empty without scores.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"dataset {self.name}"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY


class ImportedPair(models.Model):
    """One (chosen, rejected) judgement from an imported dataset."""

    origin = "imported"

    dataset = models.ForeignKey(PreferenceDataset, on_delete=models.CASCADE, related_name="pairs")
    line = models.PositiveIntegerField(help_text="Line of the imported file.")
    prompt = models.JSONField(help_text='The conversation answered: [{"role": "user", "content": "..."}, ...]')
    chosen = models.TextField()
    rejected = models.TextField()
    score_chosen = models.FloatField(null=True, blank=True)
    score_rejected = models.FloatField(null=True, blank=True)
    strength = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(3)],
        help_text="From the score gap, like a label's strength; empty without scores.")

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"pair {self.pk} of {self.dataset}"
