from __future__ import annotations

from django.contrib import admin

from training.models import Job, PolicyVersion, RewardModelVersion


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ("number", "parent", "base_model_dir", "adapter_dir", "created_at")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "step", "total_steps", "requested_by", "created_at", "finished_at")
    list_filter = ("kind", "status")
    readonly_fields = ("celery_task_id", "created_at", "started_at", "finished_at")


@admin.register(RewardModelVersion)
class RewardModelVersionAdmin(admin.ModelAdmin):
    list_display = ("number", "label_count", "train_pairs", "heldout_pairs", "heldout_accuracy", "created_at")
    readonly_fields = ("metrics", "config")
