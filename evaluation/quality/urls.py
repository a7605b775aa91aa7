"""Quality pages (global names, like annotate.urls)."""

from django.urls import path

from . import views

urlpatterns = [
    path("projects/<int:pk>/quality/", views.quality_dashboard, name="quality_dashboard"),
    path("projects/<int:pk>/quality/recompute/", views.quality_recompute, name="quality_recompute"),
    path(
        "projects/<int:pk>/quality/reports/<int:report_id>/progress/",
        views.quality_progress,
        name="quality_progress",
    ),
    path(
        "projects/<int:pk>/quality/annotators/<int:user_id>/exclude/",
        views.quality_exclude,
        name="quality_exclude",
    ),
    path(
        "projects/<int:pk>/quality/annotators/<int:user_id>/include/",
        views.quality_include,
        name="quality_include",
    ),
    path(
        "projects/<int:pk>/quality/annotators/<int:user_id>/weight/",
        views.quality_override,
        name="quality_override",
    ),
    path(
        "projects/<int:pk>/quality/annotators/<int:user_id>/weight/clear/",
        views.quality_clear_override,
        name="quality_clear_override",
    ),
    path("projects/<int:pk>/my-quality/", views.my_quality, name="my_quality"),
]
