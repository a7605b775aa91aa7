"""REST endpoints of the annotate app, mounted under /api/ (see ``annotate.api``)."""
from django.urls import path

from . import comparisons, judging, progress, projects

app_name = "annotate-api"

urlpatterns = [
    # The annotators' requests first: a request is resolved by trying the patterns in order, and
    # the submit (one request per judgment) and the next item are most of the API's traffic.
    path(
        "assignments/<int:assignment_pk>/judgment/", judging.SubmitJudgment.as_view(), name="submit-judgment"
    ),
    path("projects/<int:project_pk>/next/", judging.NextItem.as_view(), name="next"),
    path("auth/token/", projects.TokenView.as_view(), name="token"),
    path("projects/", projects.ProjectListCreate.as_view(), name="project-list"),
    path("projects/<int:project_pk>/", projects.ProjectDetail.as_view(), name="project-detail"),
    path("projects/<int:project_pk>/pools/", projects.PoolListCreate.as_view(), name="pool-list"),
    path("projects/<int:project_pk>/pools/<int:pk>/", projects.PoolDetail.as_view(), name="pool-detail"),
    path(
        "projects/<int:project_pk>/memberships/",
        projects.MembershipListCreate.as_view(),
        name="membership-list",
    ),
    path(
        "projects/<int:project_pk>/memberships/<int:pk>/",
        projects.MembershipDetail.as_view(),
        name="membership-detail",
    ),
    path(
        "projects/<int:project_pk>/comparisons/", comparisons.ComparisonList.as_view(), name="comparison-list"
    ),
    path(
        "projects/<int:project_pk>/comparisons/import/",
        comparisons.ComparisonImport.as_view(),
        name="comparison-import",
    ),
    path(
        "projects/<int:project_pk>/judgments/import/",
        comparisons.JudgmentImport.as_view(),
        name="judgment-import",
    ),
    path("projects/<int:project_pk>/gold/", comparisons.GoldList.as_view(), name="gold-list"),
    path(
        "projects/<int:project_pk>/my-judgments/", judging.MyJudgments.as_view(), name="my-judgments"
    ),
    path("projects/<int:project_pk>/progress/", progress.ProgressView.as_view(), name="progress"),
    path("assignments/<int:assignment_pk>/", judging.AssignmentDetail.as_view(), name="assignment-detail"),
    path("assignments/<int:assignment_pk>/skip/", judging.SkipAssignment.as_view(), name="skip"),
]
