from __future__ import annotations

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"

    def ready(self) -> None:
        # What follows a finished job, a label and an undo request is listed in
        # training/services/loop.py. The job queue and the labeling app are below it (the
        # loop imports what imports them), so they are handed its functions here.
        from labeling.followers import LabelFollower, follow_labels
        from training.services import jobs, loop

        jobs.follow_finished_jobs(loop.on_job_finished)
        follow_labels(LabelFollower(on_submitted=loop.on_label_submitted, undo_refusal=loop.undo_refusal))
