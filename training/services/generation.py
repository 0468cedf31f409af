"""Jobs that sample completions from policy versions and queue them as comparisons of a
run. Model code lives in `training.ml`; this module decides what to sample and store."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, F, Q

from labeling.models import Comparison, Completion, LabeledBy, Prompt
from labeling.services import create_comparison
from training.ml.generation import SamplingConfig
from training.models import Job, PolicyVersion, RewardModelVersion, Run
from training.services.evaluation import evaluation_prompts
from training.services.jobs import enqueue_on_commit, job_type
from training.services.reward_models import load_scorer
from training.services.runs import latest_reward_model
from training.services.sampling import sample_completions, sampling_config

log = logging.getLogger(__name__)

QUEUE_LOW_COMPARISONS = 8
"""Below this many open comparisons the run's page and the researcher page warn, with the
button to generate more. A generation job takes minutes (it waits for a gpu-queue
worker, loads the policy and samples every prompt) while an annotator labels a
comparison in seconds: asked for while a few are left, the new ones arrive before
people find the queue empty (in the first week's try it ran dry after ~13 labels)."""


@dataclass(frozen=True)
class QueueLow:
    """A run whose labeling queue is about to run dry."""

    run: Run
    open_comparisons: int
    generation_pending: bool
    """A generation job of the run is queued or running: more are on their way."""


def queues_running_dry(runs) -> list[QueueLow]:
    """The runs among `runs` that people label with fewer than QUEUE_LOW_COMPARISONS
    comparisons still wanting a label (bake-off ones left out: generating more does not
    add to those). Two queries, whatever the number of runs."""
    runs = [run for run in runs if run.labeled_by == LabeledBy.PEOPLE]
    open_counts = dict(Comparison.objects.filter(run__in=runs, label_count__lt=F("labels_needed"))
                       .exclude(source=Comparison.Source.BAKEOFF)
                       .values_list("run").annotate(n=Count("id")).values_list("run", "n"))
    generating = set(Job.objects.filter(run__in=runs, kind=Job.Kind.GENERATE,
                                        status__in=[Job.Status.PENDING, Job.Status.RUNNING])
                     .values_list("run_id", flat=True))
    return [QueueLow(run, open_counts.get(run.pk, 0), run.pk in generating)
            for run in runs if open_counts.get(run.pk, 0) < QUEUE_LOW_COMPARISONS]


def prompts_needing_samples(run: Run, policy: PolicyVersion, count: int, seed: int | None = None) -> list[Prompt]:
    """`count` prompts, those with the fewest completions from this policy first, in
    random order among equals so repeated requests spread over the prompt set. The run's
    evaluation prompts are never among them: the reward model that judges versions on
    them has then never been trained on a comparison of them."""
    evaluation_prompts(run)  # chosen (or topped up) before anything is sampled, and left out
    rng = random.Random(seed)
    prompts = list(
        Prompt.objects.exclude(evaluations__run=run)
        .annotate(done=Count("completions", filter=Q(completions__policy_version=policy)))
        .values_list("id", "done")
    )
    rng.shuffle(prompts)
    prompts.sort(key=lambda row: row[1])  # stable: shuffled within each count
    chosen_ids = [prompt_id for prompt_id, _ in prompts[:count]]
    by_id = Prompt.objects.in_bulk(chosen_ids)
    return [by_id[i] for i in chosen_ids]


def create_generation_job(
    run: Run, policy: PolicyVersion, prompt_count: int, requested_by: AbstractBaseUser | None = None,
    samples: int = 2, versus: list[int] = (), round_=None, seed: int | None = None,
) -> Job:
    """A pending generation job, pinned to everything it needs: the prompts (chosen now,
    so a job redelivered after a crash works on the same ones), the sampling settings,
    the query selection and the reward model that orders the queue."""
    prompts = prompts_needing_samples(run, policy, prompt_count, seed=seed)
    return pinned_generation_job(run, policy, [p.pk for p in prompts], samples, requested_by, versus=versus,
                                 round_=round_)


def create_answers_versus_job(run: Run, policy: PolicyVersion, opponents: dict[int, list[int]],
                              requested_by: AbstractBaseUser | None = None) -> Job:
    """A generation job in which `policy` answers each prompt of `opponents` (prompt id
    → completion ids, e.g. answers of outside systems) once, and each of those
    completions is compared with its answer, so the version is ranked with them."""
    return pinned_generation_job(run, policy, list(opponents), 1, requested_by,
                                 opponents={str(prompt_id): ids for prompt_id, ids in opponents.items()})


def pinned_generation_job(run: Run, policy: PolicyVersion, prompt_ids: list[int], samples: int,
                          requested_by: AbstractBaseUser | None, *, versus=(), round_=None,
                          opponents: dict[str, list[int]] | None = None) -> Job:
    judge = latest_reward_model(run)
    job = Job.objects.create(
        kind=Job.Kind.GENERATE, run=run, round=round_, requested_by=requested_by,
        total_steps=len(prompt_ids) * (1 + len(versus)),
        params={"policy_version": policy.number, "versus": list(versus), "prompt_ids": list(prompt_ids),
                "samples": samples, "selection": run.query_selection, **run.job_setup(),
                "reward_model": judge.number if judge else None,
                **({"opponents": opponents} if opponents else {})},
    )
    job.params["sampling"] = sampling_config(seed=job.pk, run=run).to_dict()
    job.save(update_fields=["params"])
    return job


def request_generation(run: Run, policy: PolicyVersion, prompt_count: int,
                       requested_by: AbstractBaseUser | None = None, samples: int = 2) -> Job:
    """Create a generation job and send it to the `gpu` queue once committed."""
    with transaction.atomic():
        job = create_generation_job(run, policy, prompt_count, requested_by, samples)
        enqueue_on_commit(job)
    return job


def query_priorities(candidates: list[tuple[Prompt, list]], selection: str, reward_model: RewardModelVersion | None,
                     seed: int, precision: str | None = None, quantization: str | None = None) -> list[float]:
    """Queue priority of each candidate comparison. "disagreement": how unsure the
    reward model's ensemble is about it (Christiano et al. 2017 query what the ensemble
    disagrees on); "random" for ablations; 0 while there is no reward model."""
    if selection == "random":
        rng = random.Random(seed)
        return [rng.random() for _ in candidates]
    if reward_model is None or not candidates:
        return [0.0] * len(candidates)
    scorer = load_scorer(reward_model, precision, quantization)
    if scorer.heads is None:
        return [0.0] * len(candidates)
    return scorer.disagreement(
        [[(prompt.messages, s.text, s.ended, s.token_ids) for s in samples] for prompt, samples in candidates]
    )


@job_type(Job.Kind.GENERATE, queue="gpu")
def run_generation_job(job: Job) -> None:
    """Sample completions for the job's prompts and queue them as comparisons of its
    run. With `versus` set (earlier version numbers), each prompt also gets a comparison
    of the new policy's first sample against each of those versions, so people measure
    progress. With `opponents` set (prompt id → completion ids), the first sample of
    each prompt is also compared with each of those stored completions (answers of
    outside systems, imported). Priorities come from query selection; every comparison
    of the job is stored at once, in one transaction."""
    try:
        params = job.params
        policy = PolicyVersion.objects.get(number=params["policy_version"])
        versus = [PolicyVersion.objects.get(number=n) for n in params.get("versus") or []]
        samples = int(params["samples"])
        # Prompts this job already covered (it committed, then its worker died) are skipped.
        done = set(Completion.objects.filter(generation_settings__job=job.pk).values_list("prompt_id", flat=True))
        by_id = Prompt.objects.in_bulk(params["prompt_ids"])
        prompts = [by_id[i] for i in params["prompt_ids"] if i in by_id and i not in done]
        config = SamplingConfig(**params["sampling"])
        conversations = [p.messages for p in prompts]
        total = len(prompts) * (1 + len(versus))
        new = sample_completions(policy, conversations, samples, config,
                                 on_batch=lambda n: job.report_progress(n, total), precision=job.precision,
                                 engine=job.sampling_engine)
        old = {}
        for index, other in enumerate(versus, start=1):
            done_before = index * len(prompts)
            old[other.number] = sample_completions(
                other, conversations, 1, config,
                on_batch=lambda n, start=done_before: job.report_progress(start + n, total), precision=job.precision,
                engine=job.sampling_engine,
            )

        opponents = {int(prompt_id): ids for prompt_id, ids in (params.get("opponents") or {}).items()}
        rivals = Completion.objects.in_bulk([i for ids in opponents.values() for i in ids])

        source = Comparison.Source.INITIAL if policy.is_base else Comparison.Source.POLICY
        candidates = []  # (prompt, [(policy, sample or stored completion), ...], source)
        for index, prompt in enumerate(prompts):
            if len(new[index]) > 1:
                candidates.append((prompt, [(policy, s) for s in new[index]], source))
            for other in versus:
                pair = [(policy, new[index][0]), (other, old[other.number][index][0])]
                candidates.append((prompt, pair, Comparison.Source.CROSS_VERSION))
            for rival_id in opponents.get(prompt.pk, []):
                if rival_id in rivals:
                    pair = [(policy, new[index][0]), (None, rivals[rival_id])]
                    candidates.append((prompt, pair, Comparison.Source.IMPORTED))
        judge_number = params.get("reward_model")
        judge = RewardModelVersion.objects.get(number=judge_number) if judge_number is not None else None
        priorities = query_priorities([(p, [s for _, s in shown]) for p, shown, _ in candidates],
                                      params["selection"], judge, seed=job.pk, precision=job.precision,
                                      quantization=job.frozen_quantization)
        store_comparisons(job, candidates, priorities, config)
    except Exception as error:
        log.exception("generation job %s failed", job.pk)
        job.mark_failed(f"{type(error).__name__}: {error}")
        return
    job.mark_succeeded({"comparisons": len(candidates), "prompts": len(prompts)})


@transaction.atomic
def store_comparisons(job: Job, candidates, priorities: list[float], config: SamplingConfig) -> None:
    job.raise_if_cancelled()  # cancelled after its last batch (while priorities were scored): nothing stored
    rng = random.Random(job.pk)
    rows: dict[int, Completion] = {}  # by id(sample): one shown in two comparisons is one row
    for (prompt, shown, source), priority in zip(candidates, priorities, strict=True):
        completions = []
        for policy, sample in shown:
            if isinstance(sample, Completion):  # stored already (an outside system's answer)
                completions.append(sample)
                continue
            if id(sample) not in rows:
                rows[id(sample)] = Completion.objects.create(
                    prompt=prompt, policy_version=policy, text=sample.text, ended=sample.ended,
                    token_ids=list(sample.token_ids) if sample.token_ids is not None else None,
                    generation_settings={**config.to_dict(), "job": job.pk, "num_tokens": sample.num_tokens},
                )
            completions.append(rows[id(sample)])
        create_comparison(job.run, prompt, completions, source=source, priority=priority, rng=rng)
