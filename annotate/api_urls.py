"""REST endpoints of the annotate app, mounted under /api/ (see ``annotate.api``)."""
from django.urls import path

from . import api

app_name = "annotate-api"

urlpatterns = [
    path("auth/token/", api.TokenView.as_view(), name="token"),
    path("projects/", api.ProjectListCreate.as_view(), name="project-list"),
    path("projects/<int:project_pk>/", api.ProjectDetail.as_view(), name="project-detail"),
    path("projects/<int:project_pk>/pools/", api.PoolListCreate.as_view(), name="pool-list"),
    path("projects/<int:project_pk>/pools/<int:pk>/", api.PoolDetail.as_view(), name="pool-detail"),
    path("projects/<int:project_pk>/memberships/", api.MembershipListCreate.as_view(), name="membership-list"),
    path(
        "projects/<int:project_pk>/memberships/<int:pk>/", api.MembershipDetail.as_view(), name="membership-detail"
    ),
    path("projects/<int:project_pk>/comparisons/", api.ComparisonList.as_view(), name="comparison-list"),
    path(
        "projects/<int:project_pk>/comparisons/import/", api.ComparisonImport.as_view(), name="comparison-import"
    ),
    path("projects/<int:project_pk>/gold/", api.GoldList.as_view(), name="gold-list"),
    path("projects/<int:project_pk>/next/", api.NextItem.as_view(), name="next"),
    path("projects/<int:project_pk>/my-judgments/", api.MyJudgments.as_view(), name="my-judgments"),
    path("projects/<int:project_pk>/progress/", api.ProgressView.as_view(), name="progress"),
    path("assignments/<int:assignment_pk>/", api.AssignmentDetail.as_view(), name="assignment-detail"),
    path("assignments/<int:assignment_pk>/judgment/", api.SubmitJudgment.as_view(), name="submit-judgment"),
    path("assignments/<int:assignment_pk>/skip/", api.SkipAssignment.as_view(), name="skip"),
]
