"""Quality REST endpoints, mounted under /api/ (namespace ``quality-api``)."""

from django.urls import path

from . import quality_api

app_name = "quality-api"

urlpatterns = [
    path("projects/<int:project_pk>/quality/", quality_api.QualityReportView.as_view(), name="report"),
    path(
        "projects/<int:project_pk>/quality/recompute/",
        quality_api.QualityRecomputeView.as_view(),
        name="recompute",
    ),
    path(
        "projects/<int:project_pk>/quality/annotators/",
        quality_api.AnnotatorQualityList.as_view(),
        name="annotator-list",
    ),
    path(
        "projects/<int:project_pk>/quality/annotators/<int:user_pk>/",
        quality_api.AnnotatorQualityDetail.as_view(),
        name="annotator-detail",
    ),
    path(
        "projects/<int:project_pk>/quality/labels/", quality_api.AggregatedLabelList.as_view(), name="labels"
    ),
    path("projects/<int:project_pk>/quality/mine/", quality_api.OwnAccuracyView.as_view(), name="mine"),
]
