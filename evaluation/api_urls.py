"""Evaluation REST endpoints under /api/: ``quality-api`` and ``export-api``."""

from django.urls import include, path

urlpatterns = [
    path("", include("evaluation.quality.api_urls")),
    path("", include("evaluation.export.api_urls")),
]
