"""Evaluation pages: the quality dashboard and the exports (global URL names)."""

from django.urls import include, path

urlpatterns = [
    path("", include("evaluation.quality.urls")),
    path("", include("evaluation.export.urls")),
]
