from __future__ import annotations

from django.contrib import admin

from training.models import BakeOff, BakeOffCandidate, Job, PolicyVersion, RewardModelVersion, Round, Run


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("name", "method", "recipe", "head", "paused", "auto_loop", "created_at")
    list_filter = ("method", "recipe", "paused")
    raw_id_fields = ("base_version", "head", "branched_from", "inherited_reward_model")


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ("number", "run", "parent", "method", "base_model_dir", "adapter_dir", "created_at")
    list_filter = ("run", "method")
    readonly_fields = ("config", "inputs", "metrics")


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ("number", "run", "recipe", "stage", "status", "created_at")
    list_filter = ("run", "status")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "run", "status", "step", "total_steps", "requested_by", "created_at", "finished_at")
    list_filter = ("kind", "status", "run")
    readonly_fields = ("celery_task_id", "created_at", "started_at", "finished_at")


@admin.register(RewardModelVersion)
class RewardModelVersionAdmin(admin.ModelAdmin):
    list_display = ("number", "run", "update", "label_count", "train_pairs", "heldout_pairs", "heldout_accuracy",
                    "created_at")
    list_filter = ("run",)
    readonly_fields = ("metrics", "config")


class BakeOffCandidateInline(admin.TabularInline):
    model = BakeOffCandidate
    raw_id_fields = ("job", "version")
    readonly_fields = ("config",)
    extra = 0


@admin.register(BakeOff)
class BakeOffAdmin(admin.ModelAdmin):
    list_display = ("id", "run", "start", "reward_model", "status", "promoted", "created_at")
    list_filter = ("run", "status")
    raw_id_fields = ("start", "reward_model", "evaluation_job", "promoted")
    readonly_fields = ("comparisons",)
    inlines = [BakeOffCandidateInline]
