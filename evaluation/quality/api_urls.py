"""Quality REST endpoints, mounted under /api/ (namespace ``quality-api``)."""

from django.urls import path

from . import api

app_name = "quality-api"

urlpatterns = [
    path("projects/<int:project_pk>/quality/", api.QualityReportView.as_view(), name="report"),
    path(
        "projects/<int:project_pk>/quality/recompute/",
        api.QualityRecomputeView.as_view(),
        name="recompute",
    ),
    path(
        "projects/<int:project_pk>/quality/annotators/",
        api.AnnotatorQualityList.as_view(),
        name="annotator-list",
    ),
    path(
        "projects/<int:project_pk>/quality/annotators/<int:user_pk>/",
        api.AnnotatorQualityDetail.as_view(),
        name="annotator-detail",
    ),
    path("projects/<int:project_pk>/quality/labels/", api.AggregatedLabelList.as_view(), name="labels"),
    path("projects/<int:project_pk>/quality/mine/", api.OwnAccuracyView.as_view(), name="mine"),
]
