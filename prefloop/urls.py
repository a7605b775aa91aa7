from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from the app's static files (drf-spectacular-sidecar), its script in a second
    # request: no CDN, no inline script (prefloop/csp.py).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include("annotate.api.urls")),
    path("api/", include("evaluation.api_urls")),
    path("api/", include("training.api_urls")),
    path("", include("annotate.urls")),
    path("", include("evaluation.urls")),
    path("", include("training.urls")),
]

# The app's own 403 and 404 pages (prefloop/errors.py): its layout, and why.
handler403 = "prefloop.errors.permission_denied"
handler404 = "prefloop.errors.not_found"
