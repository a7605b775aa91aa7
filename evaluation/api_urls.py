from django.urls import include, path

urlpatterns = [
    path("", include("evaluation.quality_api_urls")),
    path("", include("evaluation.export_api_urls")),
]
