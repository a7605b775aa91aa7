"""Export REST endpoints, mounted under /api/ (namespace ``export-api``)."""

from django.urls import path

from . import export_api

app_name = "export-api"

urlpatterns = [
    path("projects/<int:project_pk>/exports/", export_api.ExportListCreate.as_view(), name="export-list"),
    path(
        "projects/<int:project_pk>/exports/<int:export_pk>/",
        export_api.ExportDetail.as_view(),
        name="export-detail",
    ),
    path(
        "projects/<int:project_pk>/exports/<int:export_pk>/download/<str:what>/",
        export_api.ExportDownload.as_view(),
        name="export-download",
    ),
]
