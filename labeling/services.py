"""The labeling queue: who gets which comparison, and how labels are stored and undone.

Every state change runs inside `transaction.atomic`. On PostgreSQL the candidate row is
locked with `SELECT ... FOR UPDATE SKIP LOCKED`, so two annotators asking at the same
moment get different comparisons; on SQLite the settings open every transaction with
BEGIN IMMEDIATE, which serializes writers and gives the same guarantee.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from labeling import queue_sql
from labeling.followers import label_follower
from labeling.models import Assignment, Comparison, ComparisonItem, Completion, Label, LabeledBy, Prompt

MAX_ACTIVE_SECONDS = 3600.0
MAX_RATIONALE_CHARS = 2000
# Candidates to re-check before giving up on a request (each one lost a race just now).
MAX_LEASE_ATTEMPTS = 5


class LabelError(ValueError):
    """A label that cannot be stored as sent; the message says why."""


class LeaseError(LabelError):
    """A person's label for a comparison the queue did not give them (or gave away)."""


class UndoRefused(ValueError):
    """An undo the rules do not allow; the message says which rule."""


@dataclass(frozen=True)
class LabelInput:
    comparison_id: int
    choice: str
    ranking: list[int] | None = None
    strength: int | None = None
    rationale: str = ""
    active_seconds: float = 0.0


def overlap_share(run) -> float:
    """Share of the run's (a training.Run's) comparisons that several annotators label,
    to measure their agreement: none on a run a simulated annotator labels (an
    experiment's arm: it labels each comparison once), else the deployment's
    PREFLOOP_OVERLAP_SHARE."""
    if run is not None and run.labeled_by == LabeledBy.SIMULATOR:
        return 0.0
    return settings.PREFLOOP_OVERLAP_SHARE


def create_comparison(
    run,
    prompt: Prompt,
    completions: Sequence[Completion],
    source: str,
    priority: float = 0.0,
    rng: random.Random | None = None,
) -> Comparison:
    """Store a comparison of `run` (a training.Run: its reward models and methods learn
    from the labels) with its completions in a random display order (so left/right says
    nothing about which model wrote what), and decide whether it is one of the overlap
    comparisons that several annotators label."""
    if len(completions) < 2:
        raise ValueError("a comparison needs at least two completions")
    if any(c.prompt_id != prompt.pk for c in completions):
        raise ValueError("all completions of a comparison must answer its prompt")
    rng = rng or random.Random()
    shuffled = list(completions)
    rng.shuffle(shuffled)
    overlapped = rng.random() < overlap_share(run)
    with transaction.atomic():
        comparison = Comparison.objects.create(
            run=run,
            prompt=prompt,
            source=source,
            priority=priority,
            labels_needed=settings.PREFLOOP_OVERLAP_ANNOTATORS if overlapped else 1,
        )
        ComparisonItem.objects.bulk_create(
            ComparisonItem(comparison=comparison, completion=c, position=i) for i, c in enumerate(shuffled)
        )
    return comparison


def open_comparisons_for(annotator: AbstractBaseUser):
    """Comparisons that still want labels and that this annotator has not answered, of
    runs that people label (a simulated annotator labels an experiment's arms itself)."""
    return Comparison.objects.filter(label_count__lt=F("labels_needed"), run__labeled_by=LabeledBy.PEOPLE).exclude(
        labels__annotator=annotator)


def next_comparison_for(annotator: AbstractBaseUser) -> Comparison | None:
    """The comparison this annotator should label now, leased to them, or None when the
    queue holds nothing for them. A live lease they already hold comes back first, so a
    reload shows the same comparison instead of taking a second one."""
    comparison_id = take_next_lease(annotator)
    if comparison_id is None:
        return None
    # Read after the lease is committed: the write transaction holds only the lease.
    return Comparison.objects.select_related("prompt", "run").filter(pk=comparison_id).first()


@transaction.atomic
def take_next_lease(annotator: AbstractBaseUser) -> int | None:
    """The id of the comparison next_comparison_for serves, with its lease taken."""
    now = timezone.now()
    held = queue_sql.held_lease(annotator.pk, now)
    if held is not None:
        return held
    # SQLite with BEGIN IMMEDIATE runs this transaction alone, so the candidate query's
    # lease count is already current. PostgreSQL runs requests concurrently: the row lock
    # keeps two of them off one candidate, and the re-check below sees a lease that
    # another request committed after this statement began.
    concurrent = concurrent_writes()
    passed_over: list[int] = []
    for _ in range(MAX_LEASE_ATTEMPTS):
        candidate = queue_sql.first_candidate(annotator.pk, now, passed_over, lock_row=concurrent)
        if candidate is None:
            return None
        if not concurrent or queue_sql.room_for_another_annotator(candidate, annotator.pk, now):
            break
        passed_over.append(candidate)
    else:
        return None
    queue_sql.take_lease(candidate, annotator.pk, now, now + timedelta(seconds=settings.PREFLOOP_LEASE_SECONDS))
    return candidate


def concurrent_writes() -> bool:
    """Whether write transactions run side by side and the queue hands out rows with row
    locks (PostgreSQL's FOR UPDATE SKIP LOCKED); False where each runs alone (SQLite)."""
    return not serialized_writes() and connection.features.has_select_for_update_skip_locked


def serialized_writes() -> bool:
    """Whether each write transaction runs alone (SQLite opened with BEGIN IMMEDIATE or
    EXCLUSIVE, as prefloop/settings.py configures it): the mode, not the vendor, decides."""
    return getattr(connection, "transaction_mode", None) in ("IMMEDIATE", "EXCLUSIVE")


def has_room_for_another_annotator(comparison: Comparison, annotator: AbstractBaseUser, now) -> bool:
    """Whether the comparison's labels plus other people's live leases are still below
    what it needs, read in a statement of its own: under PostgreSQL's READ COMMITTED a
    lease another request committed after an earlier statement began is visible only to
    a later one."""
    return queue_sql.room_for_another_annotator(comparison.pk, annotator.pk, now)


def check_lease(comparison_id: int, annotator: AbstractBaseUser, now) -> None:
    """A person labels what the queue gave them: a live lease they hold. An expired lease
    is still honoured when nobody took the comparison meanwhile and it still wants a
    label (a slow annotator loses nothing); otherwise the label is refused."""
    live = queue_sql.lease_is_live(comparison_id, annotator.pk, now)
    if live is None:
        raise LeaseError(f"comparison {comparison_id} was not given to you; take the next one from the queue")
    if live:
        return
    if concurrent_writes():
        # The queue may be giving the comparison to someone else right now, holding its
        # row: wait for that, so the count below, a statement of its own, sees their lease.
        queue_sql.lock_comparison(comparison_id)
    if not queue_sql.room_for_another_annotator(comparison_id, annotator.pk, now):
        raise LeaseError(f"your lease on comparison {comparison_id} expired and it went to someone else")


def validate_label(label: LabelInput, completion_count: int) -> LabelInput:
    """The label as it will be stored, or LabelError. Strength only qualifies a stated
    preference, so it is dropped from ties, both-bad and skips."""
    valid_choices = {Label.Choice.SKIP}
    if completion_count == 2:
        valid_choices |= {Label.Choice.A, Label.Choice.B, Label.Choice.TIE, Label.Choice.BOTH_BAD}
    else:
        valid_choices |= {Label.Choice.RANKING, Label.Choice.BOTH_BAD}
    if label.choice not in valid_choices:
        raise LabelError(f"choice {label.choice!r} is not valid for a comparison of {completion_count}")
    ranking = None
    if label.choice == Label.Choice.RANKING:
        if sorted(label.ranking or []) != list(range(completion_count)):
            raise LabelError(f"a ranking must list each of the positions 0..{completion_count - 1} once")
        ranking = list(label.ranking)
    strength = label.strength
    if label.choice in {Label.Choice.A, Label.Choice.B, Label.Choice.RANKING}:
        if strength is not None and strength not in (1, 2, 3):
            raise LabelError("strength must be 1, 2 or 3")
    else:
        strength = None
    if len(label.rationale) > MAX_RATIONALE_CHARS:
        raise LabelError(f"the rationale is longer than {MAX_RATIONALE_CHARS} characters")
    active = min(max(float(label.active_seconds), 0.0), MAX_ACTIVE_SECONDS)
    return LabelInput(label.comparison_id, label.choice, ranking, strength, label.rationale.strip(), active)


def submit_label(
    annotator: AbstractBaseUser, label: LabelInput, origin: str = Label.Origin.HUMAN, *,
    require_lease: bool | None = None,
) -> tuple[Label, bool]:
    """Store one label. A second submission for the same comparison by the same annotator
    (a double click, a retried request) stores nothing and returns the first label with
    created=False. A person's label must come from the queue (see check_lease); simulated
    and imported labels need no lease unless `require_lease` says so."""
    if require_lease is None:
        require_lease = origin == Label.Origin.HUMAN
    # Reads first, outside the write transaction that every labeling request waits for:
    # the comparison, the label's validity and an earlier label (a double click, a retry).
    target = queue_sql.label_target(label.comparison_id)
    if target is None:
        raise LabelError(f"comparison {label.comparison_id} does not exist")
    run_id, completion_count = target
    clean = validate_label(label, completion_count)
    earlier = Label.objects.filter(comparison_id=label.comparison_id, annotator=annotator).first()
    if earlier is not None:
        return earlier, False
    stored = Label(comparison_id=label.comparison_id, annotator=annotator, choice=clean.choice, ranking=clean.ranking,
                   strength=clean.strength, rationale=clean.rationale, active_seconds=clean.active_seconds,
                   origin=origin)
    with transaction.atomic():
        if require_lease:
            try:
                check_lease(stored.comparison_id, annotator, timezone.now())
            except LeaseError:
                # A concurrent submit of the same label may have committed (and dropped
                # the lease) since the read above: that is a duplicate, not a refusal.
                earlier = Label.objects.filter(comparison_id=stored.comparison_id, annotator=annotator).first()
                if earlier is None:
                    raise
                return earlier, False
        try:
            with transaction.atomic():
                # Stamped under the lock, as the label commits: a round counts labels by
                # time, and one stamped while waiting for the lock could fall before it.
                stored.created_at = timezone.now()
                stored.save(force_insert=True)
        except IntegrityError:
            return Label.objects.get(comparison_id=stored.comparison_id, annotator=annotator), False
        queue_sql.count_label_and_drop_lease(stored.comparison_id, annotator.pk, stored.counts_as_label)
        transaction.on_commit(lambda: adjust_cached_queue_count(annotator, -1))
        # robust: whatever the loop does with the news, the label is stored and acknowledged.
        transaction.on_commit(lambda: label_follower().on_submitted(run_id), robust=True)
    return stored, True


@transaction.atomic
def undo_last_label(annotator: AbstractBaseUser) -> Comparison | None:
    """Delete the annotator's most recent label and lease its comparison back to them, so
    it is what they see next. None when they have nothing to undo; UndoRefused when the
    rules below forbid it.

    The rules, so that undo mends a slip and never rewrites history: only the latest
    label, only within PREFLOOP_UNDO_SECONDS of giving it, one undo at a time (the
    comparison given back has to be answered again first), and never a label something
    already used (a published reward model trained on it)."""
    now = timezone.now()
    if Assignment.objects.filter(annotator=annotator, returned=True, expires_at__gt=now).exists():
        raise UndoRefused("answer the comparison you took back first; undo goes back one label only")
    last = Label.objects.select_for_update().filter(annotator=annotator).order_by("-created_at", "-id").first()
    if last is None:
        return None
    if last.created_at < now - timedelta(seconds=settings.PREFLOOP_UNDO_SECONDS):
        raise UndoRefused(f"your last label is older than {settings.PREFLOOP_UNDO_SECONDS} seconds; it stays")
    if reason := label_follower().undo_refusal(last):
        raise UndoRefused(f"your last label stays: {reason}")
    comparison = last.comparison
    if not last.counts_as_label:
        # A skip left the comparison's place open, and someone may hold it now; a label
        # that counted gives its own place back.
        if concurrent_writes():
            queue_sql.lock_comparison(comparison.pk)
        if not queue_sql.room_for_another_annotator(comparison.pk, annotator.pk, now):
            raise UndoRefused("your skip stays: the comparison went to someone else meanwhile")
    deleted, _ = Label.objects.filter(pk=last.pk).delete()
    # Two undos at once lock the same row; the second finds it gone and changes nothing.
    if deleted and last.counts_as_label:
        Comparison.objects.filter(pk=comparison.pk).update(label_count=F("label_count") - 1)
    if not deleted:
        return None
    transaction.on_commit(lambda: adjust_cached_queue_count(annotator, +1))
    # Older than any other lease they hold, so next_comparison_for serves it first.
    queue_sql.take_lease(comparison.pk, annotator.pk, created_at=now - timedelta(days=1),
                         expires_at=now + timedelta(seconds=settings.PREFLOOP_LEASE_SECONDS), returned=True)
    return comparison


def annotator_counts(annotator: AbstractBaseUser, queue_max_age: float = 0) -> dict[str, int]:
    """What the annotator sees in the page header: their labels and what is left. The
    queue count walks every open comparison (the most expensive query of a labeling
    request), so a caller may accept one up to `queue_max_age` seconds old, kept in this
    process; the labeled count is always exact."""
    labeled = Label.objects.filter(annotator=annotator).exclude(choice=Label.Choice.SKIP).count()
    if queue_max_age <= 0:
        return {"labeled": labeled, "queue": open_comparisons_for(annotator).count()}
    key = queue_count_key(annotator)
    queue = cache.get(key)
    if queue is None:
        queue = open_comparisons_for(annotator).count()
        cache.set(key, queue, queue_max_age)
    return {"labeled": labeled, "queue": queue}


def queue_count_key(annotator: AbstractBaseUser) -> str:
    return f"labeling:queue-count:{annotator.pk}"


def adjust_cached_queue_count(annotator: AbstractBaseUser, change: int) -> None:
    """An annotator's own label takes exactly one comparison out of their queue (an undo
    puts it back), so a cached count stays exact for what they did themselves."""
    try:
        cache.incr(queue_count_key(annotator), change)
    except ValueError:  # nothing cached in this process
        pass
