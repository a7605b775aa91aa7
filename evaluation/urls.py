from django.urls import include, path

urlpatterns = [
    path("", include("evaluation.quality_urls")),
    path("", include("evaluation.export_urls")),
]
