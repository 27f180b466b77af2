"""URL configuration: the gallery (pages and JSON API), Django admin and the login pages."""
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from gallery.throttling import rate_limited
from gallery.views import media

urlpatterns = [
    path("admin/login/", rate_limited("login", methods=("POST",))(admin.site.login)),
    path("admin/", admin.site.urls),
    path("accounts/login/", rate_limited("login", methods=("POST",))(LoginView.as_view()), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("gallery.urls")),
    # Browsers ask for /favicon.ico on pages that do not name an icon (admin, files).
    path("favicon.ico", RedirectView.as_view(url=static("gallery/favicon.ico"), permanent=True)),
]

if settings.IMAGESEARCH_SERVE_MEDIA:
    # Every file goes through the access check; the front server may still send the bytes
    # (IMAGESEARCH_MEDIA_ACCEL). IMAGESEARCH_SERVE_MEDIA=false leaves MEDIA_URL to the front server.
    urlpatterns.append(re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", media))
