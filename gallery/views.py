"""The gallery's pages: thin views over ingest, captions and querying."""
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from .captions import search_weights
from .forms import QueryPhotoForm, SearchForm, UploadForm, read_upload, upload_file
from .ingest import RejectedUpload
from .models import Image
from .querying import (
    CaptioningBusy, describe_query_photo, search_by_photo, search_images, similar_images, split_by_relevance,
)

MORE_LIKE_THIS = 8
# Seconds a client should wait before asking again when no worker captioned a query photo.
RETRY_AFTER = 10


def public_or_login(view):
    """Browsing and search are public unless IMAGESEARCH_PUBLIC is off; then they need a login."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not settings.IMAGESEARCH_PUBLIC and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def visible_images(user):
    """Images a person may see: hidden ones only for staff (curators)."""
    images = Image.objects.prefetch_related("captions")
    return images if user.is_staff else images.filter(hidden=False)


@public_or_login
def index(request):
    """The gallery: newest first."""
    page = Paginator(visible_images(request.user), settings.IMAGESEARCH_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "gallery/index.html", {"page": page})


@public_or_login
def image_detail(request, pk):
    """One photo with its captions, tags, attention maps and similar photos (its whole description and fingerprint)."""
    image = get_object_or_404(visible_images(request.user), pk=pk)
    caption = image.active_caption
    similar, weights = [], search_weights()
    if caption is not None:
        similar = similar_images(image, caption, per_page=MORE_LIKE_THIS)
    tags = image.tags.filter(removed=False, probability__gte=weights.tag_min_probability)
    return render(request, "gallery/detail.html", {"image": image, "caption": caption, "similar": similar, "tags": tags})


@public_or_login
def search(request):
    """Results for the words in ?q=, ranked by score, with the query's interpretation."""
    form = SearchForm(request.GET)
    context = {"form": form}
    if form.is_valid() and form.cleaned_data["q"]:
        results, matches = search_images(form.cleaned_data["q"], page=form.cleaned_data["page"] or 1)
        strong, weak = split_by_relevance(matches)
        context.update(results=results, matches=matches, strong=strong, weak=weak, query=form.cleaned_data["q"])
    return render(request, "gallery/search.html", context, status=200 if form.is_valid() else 400)


@public_or_login
def search_by_image(request):
    """Describe a query photo with the captioning model, then search with its description and fingerprint."""
    form = QueryPhotoForm(request.POST, request.FILES) if request.method == "POST" else QueryPhotoForm()
    context, status = {"form": form}, 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                described = describe_query_photo(read_upload(form.cleaned_data["file"]))
            except RejectedUpload as exc:
                form.add_error("file", str(exc))
            except CaptioningBusy as exc:
                context["busy"], status = str(exc), 503
            else:
                results, matches = search_by_photo(described)
                strong, weak = split_by_relevance(matches)
                context.update(
                    described=described, results=results, matches=matches, strong=strong, weak=weak, query=described.caption
                )
                status = 200
    response = render(request, "gallery/search_by_image.html", context, status=status)
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER)
    return response


@login_required
def upload(request):
    """Upload page; scripts send one file per request to the API, this handles the plain form."""
    form = UploadForm(request.POST, request.FILES) if request.method == "POST" else UploadForm()
    outcomes = []
    if request.method == "POST" and form.is_valid():
        outcomes = [upload_file(uploaded, request.user) for uploaded in form.cleaned_data["files"]]
    return render(
        request,
        "gallery/upload.html",
        {"form": form, "outcomes": outcomes, "max_mb": settings.IMAGESEARCH_MAX_UPLOAD_BYTES // (1024 * 1024)},
    )
