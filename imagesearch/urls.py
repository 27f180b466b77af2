"""URL configuration: the gallery (pages and JSON API), Django admin and the login pages."""
from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from django.views.static import serve


def serve_media(request, path):
    """Uploaded photos and thumbnails (content-addressed names); MEDIA_ROOT is read per request."""
    return serve(request, path, document_root=settings.MEDIA_ROOT)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("gallery.urls")),
    # Browsers ask for /favicon.ico on pages that do not name an icon (admin, files).
    path("favicon.ico", RedirectView.as_view(url=static("gallery/favicon.ico"), permanent=True)),
]

if settings.IMAGESEARCH_SERVE_MEDIA:
    # A front web server may serve MEDIA_ROOT itself instead (IMAGESEARCH_SERVE_MEDIA=false).
    urlpatterns.append(re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve_media))
