"""The gallery's pages: thin views over ingest, captions, querying and media access."""
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from knox.models import AuthToken

from . import media as media_files
from .captions import search_weights
from .forms import QueryPhotoForm, SearchForm, UploadForm
from .ingest import RejectedUpload, read_upload, upload_file
from .models import Image, Tag
from .querying import (
    RETRY_AFTER, CaptioningBusy, describe_query_photo, search_by_photo, search_images, similar_images, split_by_relevance,
)
from .throttling import rate_limited

MORE_LIKE_THIS = 8


def public_or_login(view):
    """Browsing and search are public unless IMAGESEARCH_PUBLIC is off; then they need a login."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not settings.IMAGESEARCH_PUBLIC and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def visible_images(user):
    """The images a person may see, with their captions loaded."""
    return Image.objects.prefetch_related("captions").visible_to(user)


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
    shown = image.tags.filter(removed=False)
    tags = shown.filter(kind=Tag.Kind.CONCEPT, probability__gte=weights.tag_min_probability)
    objects = shown.filter(kind=Tag.Kind.OBJECT, probability__gte=weights.object_tag_min_probability)
    context = {"image": image, "caption": caption, "similar": similar, "tags": tags, "objects": objects}
    return render(request, "gallery/detail.html", context)


@public_or_login
@rate_limited("search", methods=("GET",))
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
@rate_limited("search_by_image", methods=("POST",))
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
                    described=described, results=results, matches=matches, strong=strong, weak=weak, query=described.caption,
                )
                status = 200
    response = render(request, "gallery/search_by_image.html", context, status=status)
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER)
    return response


@login_required
@rate_limited("upload", methods=("POST",))
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


def media(request, path):
    """An uploaded photo or thumbnail, for those who may see its image (404 for anyone else, as
    for a file that does not exist); the bytes come from MEDIA_ROOT or from the front server
    (IMAGESEARCH_MEDIA_ACCEL)."""
    allowed = settings.IMAGESEARCH_PUBLIC or request.user.is_authenticated
    image = media_files.visible_image_of(path, request.user) if allowed else None
    if image is None:
        return render(request, "404.html", status=404)
    return media_files.send(request, path, shared=settings.IMAGESEARCH_PUBLIC and not image.hidden)


@login_required
def api_tokens(request):
    """The person's API tokens: create one (shown once, on this answer only), see and revoke them."""
    created = None
    if request.method == "POST":
        created = AuthToken.objects.create(request.user, expiry=settings.REST_KNOX["TOKEN_TTL"])[1]
    tokens = AuthToken.objects.filter(user=request.user).order_by("-created")
    return render(request, "gallery/tokens.html", {"tokens": tokens, "created": created}, status=201 if created else 200)


@login_required
@require_POST
def revoke_api_token(request, token_key):
    """Revoke one of the person's own tokens (anyone else's is simply not found)."""
    AuthToken.objects.filter(user=request.user, token_key=token_key).delete()
    return redirect("gallery:api-tokens")
