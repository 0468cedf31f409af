"""The training app's rows, by what they are: runs and their versions (runs.py), rounds,
jobs, evaluation answers and scores, bake-offs. State changes of one row are its methods
(`Job.mark_running`, `Round.advance`, `Run.pause`, `BakeOff.fail`, ...); work across rows
is in training/services/."""

from __future__ import annotations

from training.models.bakeoffs import BakeOff, BakeOffCandidate
from training.models.evaluation import EvaluationPrompt, EvaluationSample, RewardScore
from training.models.jobs import Job, JobCancelled
from training.models.rounds import Round
from training.models.runs import (
    BAKEOFF_SOURCE,
    OUTSIDE_METHOD,
    PolicyVersion,
    RewardModelVersion,
    Run,
    RunDataset,
    json_safe,
)

__all__ = [
    "BAKEOFF_SOURCE", "BakeOff", "BakeOffCandidate", "EvaluationPrompt", "EvaluationSample", "Job", "JobCancelled",
    "OUTSIDE_METHOD", "PolicyVersion", "RewardModelVersion", "RewardScore", "Round", "Run", "RunDataset", "json_safe",
]
