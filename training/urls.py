"""Training pages. Names are global (no namespace), prefixed ``training_`` / ``model_``."""

from django.urls import path

from . import views
from .active import views as active_views

urlpatterns = [
    path("projects/<int:pk>/runs/", views.runs_list, name="training_runs"),
    path("projects/<int:pk>/runs/new/", views.run_new, name="training_run_new"),
    path("projects/<int:pk>/runs/<int:run_id>/", views.run_detail, name="training_run"),
    path("projects/<int:pk>/runs/<int:run_id>/live/", views.run_live, name="training_run_live"),
    path("projects/<int:pk>/runs/<int:run_id>/cancel/", views.run_cancel, name="training_run_cancel"),
    path("projects/<int:pk>/runs/<int:run_id>/resume/", views.run_resume, name="training_run_resume"),
    path("projects/<int:pk>/runs/<int:run_id>/sample/", views.run_sample, name="training_run_sample"),
    path(
        "projects/<int:pk>/runs/<int:run_id>/sample-round/",
        views.run_sample_round,
        name="training_run_sample_round",
    ),
    path("projects/<int:pk>/samples/<int:sample_id>/", views.sample_detail, name="training_sample"),
    path("projects/<int:pk>/sampling/<int:job_id>/", views.sampling_job_detail, name="training_sampling_job"),
    path("projects/<int:pk>/priorities/", active_views.priorities_panel, name="training_priorities"),
    path("models/", views.model_registry, name="model_registry"),
]
