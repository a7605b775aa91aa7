"""REST endpoints of the training app, mounted under /api/ (see ``training.api``)."""

from django.urls import path

from . import api
from .active import api as active_api
from .loop import api as loop_api

app_name = "training-api"

urlpatterns = [
    path("projects/<int:project_pk>/runs/", api.RunListCreate.as_view(), name="run-list"),
    path("projects/<int:project_pk>/runs/<int:run_pk>/", api.RunDetail.as_view(), name="run-detail"),
    path(
        "projects/<int:project_pk>/runs/<int:run_pk>/metrics/", api.RunMetrics.as_view(), name="run-metrics"
    ),
    path("projects/<int:project_pk>/runs/<int:run_pk>/cancel/", api.RunCancel.as_view(), name="run-cancel"),
    path("projects/<int:project_pk>/runs/<int:run_pk>/resume/", api.RunResume.as_view(), name="run-resume"),
    path("projects/<int:project_pk>/runs/<int:run_pk>/samples/", api.RunSample.as_view(), name="run-sample"),
    path(
        "projects/<int:project_pk>/runs/<int:run_pk>/sample-round/",
        api.RunSampleRound.as_view(),
        name="run-sample-round",
    ),
    path(
        "projects/<int:project_pk>/samples/<int:sample_pk>/", api.SampleDetail.as_view(), name="sample-detail"
    ),
    path(
        "projects/<int:project_pk>/sampling-jobs/<int:job_pk>/",
        api.SamplingJobDetail.as_view(),
        name="sampling-job-detail",
    ),
    path("projects/<int:project_pk>/loops/", loop_api.LoopListCreate.as_view(), name="loop-list"),
    path("projects/<int:project_pk>/loops/<int:loop_pk>/", loop_api.LoopDetail.as_view(), name="loop-detail"),
    path("projects/<int:project_pk>/priorities/", active_api.Priorities.as_view(), name="priorities"),
    path("models/", api.ModelListCreate.as_view(), name="model-list"),
]
