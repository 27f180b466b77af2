"""URL configuration: the gallery (pages and JSON API), Django admin and the login pages."""
from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("gallery.urls")),
]

if settings.IMAGESEARCH_SERVE_MEDIA:
    # Uploaded photos live under content-addressed names; a front proxy may serve MEDIA_ROOT instead.
    urlpatterns.append(
        re_path(rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT})
    )
