"""The rounds page (global names, like annotate.urls)."""

from django.urls import path

from . import views

urlpatterns = [
    path("projects/<int:pk>/rounds/", views.rounds_page, name="rounds"),
]
