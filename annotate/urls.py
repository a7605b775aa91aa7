"""The app's pages. Names are global (no namespace): settings.LOGIN_REDIRECT_URL is "home"."""
from django.urls import path

from . import gold_views, revision_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new/", views.project_create, name="project_create"),
    path("projects/<int:pk>/", views.project_detail, name="project_detail"),
    path("projects/<int:pk>/settings/", views.project_settings, name="project_settings"),
    path("projects/<int:pk>/pools/", views.project_pools, name="project_pools"),
    path("projects/<int:pk>/pools/<int:pool_id>/", views.project_pool_edit, name="project_pool_edit"),
    path("projects/<int:pk>/pools/<int:pool_id>/delete/", views.project_pool_delete, name="project_pool_delete"),
    path("projects/<int:pk>/members/", views.project_members, name="project_members"),
    path("projects/<int:pk>/members/<int:membership_id>/", views.project_member_edit, name="project_member_edit"),
    path(
        "projects/<int:pk>/members/<int:membership_id>/remove/",
        views.project_member_remove,
        name="project_member_remove",
    ),
    path("projects/<int:pk>/import/", views.project_import, name="project_import"),
    path("projects/<int:pk>/gold/", gold_views.project_gold, name="project_gold"),
    path("projects/<int:pk>/import/progress/", views.project_import_progress, name="project_import_progress"),
    path("projects/<int:pk>/progress/", views.project_progress, name="project_progress"),
    path("projects/<int:pk>/annotate/", views.annotate, name="annotate"),
    path("projects/<int:pk>/annotate/skip/", views.annotate_skip, name="annotate_skip"),
    path("projects/<int:pk>/annotate/back/", revision_views.annotate_back, name="annotate_back"),
    path("projects/<int:pk>/annotate/revise/", revision_views.annotate_revise, name="annotate_revise"),
]
