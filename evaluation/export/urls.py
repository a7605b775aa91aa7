"""Export pages (names are global, like the rest of the app's)."""

from django.urls import path

from . import views

urlpatterns = [
    path("projects/<int:pk>/exports/", views.export_list, name="export_list"),
    path("projects/<int:pk>/exports/<int:export_id>/", views.export_detail, name="export_detail"),
    path("projects/<int:pk>/exports/<int:export_id>/status/", views.export_status, name="export_status"),
    path("projects/<int:pk>/exports/<int:export_id>/retry/", views.export_retry, name="export_retry"),
    path(
        "projects/<int:pk>/exports/<int:export_id>/download/<str:what>/",
        views.export_download,
        name="export_download",
    ),
]
