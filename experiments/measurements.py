"""What the simulated annotator does to an arm's run, and what an experiment measures
after each round. Gold scores are written to experiments.GoldScore only; labels carry a
choice (a, b, tie, ranking) and nothing of the score behind it."""

from __future__ import annotations

from django.db.models import Q

from experiments.gold import GoldJudge, simulated_judgement
from experiments.models import ArmRun, GoldScore, RoundResult
from labeling.models import Comparison, Label
from labeling.services import LabelInput, submit_label
from labeling.simulation import oracle_annotator
from training.models import EvaluationSample, Job, PolicyVersion, RewardModelVersion, RewardScore


def experiment_annotator(arm_run: ArmRun):
    """The experiment's simulated annotator: an account that cannot sign in."""
    return oracle_annotator(f"experiment-{arm_run.experiment_id}")


def label_comparisons(arm_run: ArmRun, judge: GoldJudge, noise: float, count: int) -> int:
    """Label the `count` comparisons of the arm's run that its queue would serve first
    (highest priority: the query selection's choice), as the simulated annotator with
    the hidden gold reward would. Returns how many it labeled."""
    annotator = experiment_annotator(arm_run)
    chosen = list(Comparison.objects.filter(run=arm_run.run, label_count=0).exclude(labels__annotator=annotator)
                  .select_related("prompt").order_by("-priority", "id")[:count])
    for comparison in chosen:
        completions = comparison.ordered_completions()
        texts = [c.text for c in completions]
        scores = judge.score([(comparison.prompt.messages, c.text, c.ended) for c in completions])
        judgement = simulated_judgement(scores, texts, comparison.prompt.content_hash, noise, arm_run.seed)
        submit_label(annotator, LabelInput(comparison.pk, judgement.choice, judgement.ranking),
                     origin=Label.Origin.SIMULATED)
    return len(chosen)


def compute_seconds(arm_run: ArmRun, up_to_round_number: int | None) -> float:
    """Job time of the arm's run: jobs outside rounds, and those of rounds up to this one."""
    jobs = Job.objects.filter(run=arm_run.run, started_at__isnull=False, finished_at__isnull=False)
    in_scope = Q(round=None) if up_to_round_number is None else Q(round=None) | Q(round__number__lte=up_to_round_number)
    return sum((job.finished_at - job.started_at).total_seconds() for job in jobs.filter(in_scope))


def record_result(arm_run: ArmRun, round_index: int, version: PolicyVersion,
                  reward_model: RewardModelVersion | None, judge: GoldJudge, *,
                  up_to_round_number: int | None) -> RoundResult:
    """Score the version's evaluation answers with the gold judge, read its reward
    model's scores of the same answers and the KL to the base its evaluation job
    measured (with the design's kl_samples; None when 0), and store it all."""
    samples = list(EvaluationSample.objects.filter(policy_version=version, prompt__evaluations__run=arm_run.run)
                   .select_related("completion", "prompt").order_by("prompt_id"))
    if not samples:
        raise ValueError(f"{version} has no evaluation answers in {arm_run.run}: the round's evaluation did not run")
    gold = judge.score([(s.prompt.messages, s.completion.text, s.completion.ended) for s in samples])
    proxy = None
    if reward_model is not None:
        scores = RewardScore.objects.filter(reward_model=reward_model, completion__in=[s.completion for s in samples])
        values = list(scores.values_list("score", flat=True))
        proxy = sum(values) / len(values) if values else None
    version.refresh_from_db(fields=["kl_to_base"])
    kl = 0.0 if version.is_base else version.kl_to_base
    if kl is None and arm_run.run.sampling.get("kl_samples", 0) > 0:
        error = Job.objects.filter(run=arm_run.run, kind=Job.Kind.EVALUATE).order_by("-pk").values_list(
            "error", flat=True).first()
        raise ValueError(f"{version} has no KL to its base: its evaluation job did not measure it ({error or '?'})")
    result = RoundResult.objects.create(
        arm_run=arm_run, round_index=round_index, policy_version=version, reward_model=reward_model,
        gold_reward=sum(gold) / len(gold), proxy_reward=proxy, kl=kl,
        labels=Label.objects.filter(comparison__run=arm_run.run).count(),
        compute_seconds=compute_seconds(arm_run, up_to_round_number),
    )
    GoldScore.objects.bulk_create(GoldScore(result=result, prompt=s.prompt, completion=s.completion, score=score)
                                  for s, score in zip(samples, gold, strict=True))
    return result

