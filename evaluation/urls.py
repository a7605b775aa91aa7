"""Evaluation pages: the quality dashboard, the exports and the rounds (global URL names)."""

from django.urls import include, path

urlpatterns = [
    path("", include("evaluation.quality.urls")),
    path("", include("evaluation.export.urls")),
    path("", include("evaluation.rounds.urls")),
]
