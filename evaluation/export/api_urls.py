"""Export REST endpoints, mounted under /api/ (namespace ``export-api``)."""

from django.urls import path

from . import api

app_name = "export-api"

urlpatterns = [
    path("projects/<int:project_pk>/exports/", api.ExportListCreate.as_view(), name="export-list"),
    path(
        "projects/<int:project_pk>/exports/<int:export_pk>/",
        api.ExportDetail.as_view(),
        name="export-detail",
    ),
    path(
        "projects/<int:project_pk>/exports/<int:export_pk>/download/<str:what>/",
        api.ExportDownload.as_view(),
        name="export-download",
    ),
]
