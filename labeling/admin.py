from __future__ import annotations

from django.contrib import admin

from labeling.models import Assignment, Comparison, ComparisonItem, Completion, Label, Prompt


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "__str__", "category", "source", "created_at")
    list_filter = ("category", "source")
    search_fields = ("messages",)


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "policy_version", "ended", "created_at")
    list_filter = ("policy_version", "ended")
    list_select_related = ("prompt", "policy_version")
    raw_id_fields = ("prompt",)


class ComparisonItemInline(admin.TabularInline):
    model = ComparisonItem
    raw_id_fields = ("completion",)
    extra = 0


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "source", "priority", "label_count", "labels_needed", "created_at")
    list_filter = ("source", "labels_needed")
    list_select_related = ("prompt",)
    raw_id_fields = ("prompt",)
    inlines = [ComparisonItemInline]


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = (
        "id", "comparison", "annotator", "choice", "strength", "active_seconds", "is_simulated", "created_at"
    )
    list_filter = ("choice", "is_simulated", "annotator")
    list_select_related = ("comparison", "annotator")
    raw_id_fields = ("comparison",)


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "comparison", "annotator", "expires_at", "created_at")
    list_select_related = ("comparison", "annotator")
    raw_id_fields = ("comparison",)
