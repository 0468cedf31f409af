from __future__ import annotations

from django.contrib import admin

from labeling.models import Assignment, Comparison, ComparisonItem, Completion, Label, PreferenceDataset, Prompt


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "__str__", "category", "source", "created_at")
    list_filter = ("category", "source")
    search_fields = ("messages",)


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "policy_version", "external_source", "ended", "created_at")
    list_filter = ("ended", "external_source")
    list_select_related = ("prompt", "policy_version")
    raw_id_fields = ("prompt",)


class ComparisonItemInline(admin.TabularInline):
    model = ComparisonItem
    raw_id_fields = ("completion",)
    extra = 0


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("id", "run", "prompt", "source", "priority", "label_count", "labels_needed", "created_at")
    list_filter = ("run", "source", "labels_needed")
    list_select_related = ("prompt",)
    raw_id_fields = ("prompt",)
    inlines = [ComparisonItemInline]


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = (
        "id", "comparison", "annotator", "choice", "strength", "active_seconds", "origin", "created_at"
    )
    list_filter = ("choice", "origin", "annotator")
    list_select_related = ("comparison", "annotator")
    raw_id_fields = ("comparison",)


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "comparison", "annotator", "expires_at", "created_at")
    list_select_related = ("comparison", "annotator")
    raw_id_fields = ("comparison",)


@admin.register(PreferenceDataset)
class PreferenceDatasetAdmin(admin.ModelAdmin):
    """Deleting a dataset deletes its pairs; one a run still trains on cannot be deleted
    (remove it from the run first)."""

    list_display = ("name", "status", "pair_count", "skipped_identical", "skipped_ties", "source_filename",
                    "created_by", "created_at")
    list_filter = ("status",)
    readonly_fields = ("status", "error", "pair_count", "skipped_identical", "skipped_ties", "formats",
                       "strength_cutpoints", "source_filename", "created_by", "created_at")
