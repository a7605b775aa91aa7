from django.contrib import admin

from . import gold, models


class PoolInline(admin.TabularInline):
    model = models.Pool
    extra = 0


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "overlap", "gold_rate", "allow_ties", "current_round", "created_at")
    search_fields = ("name",)
    inlines = [PoolInline]


@admin.register(models.Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "target_share")
    list_filter = ("project",)


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "project", "role", "pool", "excluded", "weight_override")
    list_filter = ("project", "role", "pool", "excluded")
    search_fields = ("user__username",)


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "__str__", "created_at")
    list_filter = ("project",)
    search_fields = ("text",)


@admin.register(models.Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "model_name", "round", "__str__")
    list_filter = ("model_name", "round")
    raw_id_fields = ("prompt",)


@admin.register(models.Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "round", "is_gold", "is_open", "slots_taken", "n_judgments")
    list_filter = ("project", "round", "is_gold", "is_open")
    raw_id_fields = ("prompt", "response_a", "response_b")
    # is_gold follows the comparison's gold answer (annotate.gold): add or delete a Gold answer
    readonly_fields = ("is_gold", "is_open", "slots_taken", "n_judgments")


@admin.register(models.GoldAnswer)
class GoldAnswerAdmin(admin.ModelAdmin):
    """Adding, changing or deleting a gold answer here flags or unflags its comparison, exactly
    as the project's Gold page does (annotate.gold)."""

    list_display = ("comparison", "answer")
    raw_id_fields = ("comparison",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        gold.flag_from_answer(obj)

    def delete_model(self, request, obj):
        comparison = obj.comparison
        super().delete_model(request, obj)
        gold.unflag_after_delete(comparison)

    def delete_queryset(self, request, queryset):
        comparisons = [a.comparison for a in queryset.select_related("comparison__project")]
        super().delete_queryset(request, queryset)
        for comparison in comparisons:
            gold.unflag_after_delete(comparison)


@admin.register(models.Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "annotator", "comparison", "status", "a_on_left", "expires_at")
    list_filter = ("project", "status")
    raw_id_fields = ("comparison", "annotator")


@admin.register(models.Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = (
        "id", "project", "annotator", "comparison", "choice", "display_order", "strength", "seconds",
        "created_at",
    )
    # a_on_left's filter offers Yes / No / Unknown (NULL: imported without a display order).
    list_filter = ("project", "choice", "source", "a_on_left")
    raw_id_fields = ("comparison", "annotator", "assignment")

    @admin.display(description="display order", ordering="a_on_left")
    def display_order(self, judgment: models.Judgment) -> str:
        """A|B shown left-right, or "unknown" where the order was not recorded (NULL)."""
        if judgment.a_on_left is None:
            return "unknown"
        return "A left" if judgment.a_on_left else "B left"
