from __future__ import annotations

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"

    def ready(self) -> None:
        # The labeling app announces labels and the job dispatcher announces finished
        # jobs; the loop listens. Connected here so neither imports the loop.
        from labeling.signals import label_submitted, label_undo_requested
        from training.services import bakeoffs, datasets, jobs, reward_models, rounds

        label_submitted.connect(rounds.react_to_new_label, dispatch_uid="training.react_to_new_label")
        label_undo_requested.connect(reward_models.reward_model_trained_on, dispatch_uid="training.label_in_use")
        jobs.job_finished.connect(rounds.advance_round, dispatch_uid="training.advance_round")
        jobs.job_finished.connect(datasets.clean_up_after_import_job, dispatch_uid="training.import_clean_up")
        jobs.job_finished.connect(bakeoffs.advance_bakeoff, dispatch_uid="training.advance_bakeoff")
