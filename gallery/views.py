"""Thin views over gallery.services."""
from django.conf import settings
from django.core.paginator import Paginator
from django.shortcuts import render

from .models import Image


def index(request):
    """The gallery: newest first, hidden images only for staff."""
    images = Image.objects.prefetch_related("captions")
    if not request.user.is_staff:
        images = images.filter(hidden=False)
    page = Paginator(images, settings.IMAGESEARCH_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "gallery/index.html", {"page": page})
