"""Uploaded photos and thumbnails, sent only after an access check (see views.media).

Their names derive from the SHA-256 of the photo, so a public URL would let anyone holding a copy
confirm that a hidden photo (or any photo of a private site) is in the gallery. Django checks
access; the bytes come from MEDIA_ROOT through Django, or through the front server when
IMAGESEARCH_MEDIA_ACCEL names one:

- "x-accel-redirect" (nginx, Caddy): the answer carries `X-Accel-Redirect:
  IMAGESEARCH_MEDIA_ACCEL_PREFIX + name`, an internal location of the front server (README);
- "x-sendfile" (Apache mod_xsendfile, lighttpd): the answer carries `X-Sendfile: <absolute path>`.
"""
import mimetypes

from django.conf import settings
from django.db.models import Q
from django.http import HttpResponse
from django.utils.cache import patch_cache_control
from django.views.static import serve

from .models import Image

# Visibility can change (hide, a private site), so caches keep a file only a short while.
CACHE_SECONDS = 300


def visible_image_of(name: str, user) -> Image | None:
    """The image whose photo or thumbnail is stored under this name, if this person may see it
    (only names in the database are ever sent)."""
    if not name:
        return None
    return Image.objects.visible_to(user).filter(Q(file=name) | Q(thumbnail=name)).first()


def send(request, name: str, *, shared: bool):
    """The file's answer; `shared` (a visible photo of a public site) may be kept by shared caches."""
    accel = settings.IMAGESEARCH_MEDIA_ACCEL
    if accel == "x-accel-redirect":
        response = HttpResponse(content_type=mimetypes.guess_type(name)[0])
        response["X-Accel-Redirect"] = settings.IMAGESEARCH_MEDIA_ACCEL_PREFIX.rstrip("/") + "/" + name
    elif accel == "x-sendfile":
        response = HttpResponse(content_type=mimetypes.guess_type(name)[0])
        response["X-Sendfile"] = str(settings.MEDIA_ROOT / name)
    else:
        response = serve(request, name, document_root=settings.MEDIA_ROOT)
    patch_cache_control(response, public=shared, private=not shared, max_age=CACHE_SECONDS)
    return response
