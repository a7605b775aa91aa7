from django.contrib import admin

from . import models


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


@admin.register(models.GoldAnswer)
class GoldAnswerAdmin(admin.ModelAdmin):
    list_display = ("comparison", "answer")
    raw_id_fields = ("comparison",)


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
