"""The JSON API (see docs/api.md): search, search by image, list, show and upload images.

Every error is a JSON body {"error": "..."} with a fitting status. Requests authenticate with
the Django session; CSRF is checked for session-authenticated requests (the browser's), as the
pages do, while anonymous requests carry no credentials a forged request could borrow.
"""
from dataclasses import asdict
from functools import wraps

from django.conf import settings
from django.core.paginator import EmptyPage, Paginator
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from .forms import read_upload, upload_file
from .ingest import RejectedUpload
from .querying import CaptioningBusy, describe_query_photo, search_images
from .views import RETRY_AFTER, visible_images

MAX_PER_PAGE = 100


class ApiError(Exception):
    """Raised inside an API view; becomes {"error": message} with the status."""

    def __init__(self, message: str, status: int = 400, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def json_error(message: str, status: int, headers=None) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason


def _csrf_failure(request) -> str | None:
    """The CSRF middleware's verdict on this request, as a reason (None when it passes)."""
    check = _CsrfCheck(lambda request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def api_view(*methods, post_needs_login: bool = False):
    """Method check (405), access (401: private site, or a POST that needs a login), CSRF for
    session users (403), and ApiError turned into a JSON error."""

    def decorate(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                response = json_error(f"Method {request.method} not allowed.", 405)
                response["Allow"] = ", ".join(methods)
                return response
            needs_login = (post_needs_login and request.method == "POST") or not settings.IMAGESEARCH_PUBLIC
            if needs_login and not request.user.is_authenticated:
                return json_error(
                    "Authentication required: log in at /accounts/login/ and send the session cookie.",
                    401,
                    {"WWW-Authenticate": 'Session realm="imagesearch"'},
                )
            if request.user.is_authenticated and request.method == "POST":
                reason = _csrf_failure(request)
                if reason:
                    return json_error(f"CSRF check failed: {reason}", 403)
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return json_error(str(exc), exc.status, exc.headers)

        return wrapper

    return decorate


def _positive_int(request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.GET.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ApiError(f"'{name}' must be a positive integer.")
    return min(value, maximum) if maximum else value


def _one_file(request):
    files = request.FILES.getlist("file")
    if len(files) != 1:
        raise ApiError("Send exactly one file in the multipart field 'file'.")
    return files[0]


def caption_json(caption) -> dict:
    return {
        "text": caption.text,
        "source": caption.source,
        "model_version": caption.model_version,
        "score": caption.score,  # = log_prob, kept for existing clients
        "log_prob": caption.score,
        "confidence": caption.confidence,
        "confidence_label": caption.confidence_label,
        "active": caption.is_active,
        "created_at": caption.created_at.isoformat(),
    }


def image_json(request, image, *, detail: bool = False) -> dict:
    """An image as the API shows it; the detail form adds every caption and the attention maps."""
    active = image.active_caption
    data = {
        "id": image.pk,
        "page_url": request.build_absolute_uri(reverse("gallery:image", args=[image.pk])),
        "api_url": request.build_absolute_uri(reverse("gallery:api-image", args=[image.pk])),
        "file_url": request.build_absolute_uri(image.file.url),
        "thumbnail_url": request.build_absolute_uri(image.thumbnail.url) if image.thumbnail else None,
        "original_name": image.original_name,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "status": image.status,
        "error": image.error,
        "uploaded_at": image.uploaded_at.isoformat(),
        "caption": caption_json(active) if active else None,
    }
    if detail:
        data["captions"] = [caption_json(caption) for caption in image.captions.all()]
        data["attention"] = active.attention if active else None
    return data


def search_json(request, results, matches) -> dict:
    return {
        "page": results.page,
        "per_page": results.per_page,
        "num_pages": results.num_pages,
        "total": results.total,
        "interpretation": asdict(results.interpretation),
        "message": results.message,
        "results": [
            {"score": hit.score, "matched_terms": hit.matched_terms, "image": image_json(request, image)}
            for hit, image in matches
        ],
    }


@api_view("GET")
def search(request):
    query = request.GET.get("q", "")
    page = _positive_int(request, "page", 1)
    per_page = _positive_int(request, "per_page", settings.IMAGESEARCH_PAGE_SIZE, MAX_PER_PAGE)
    results, matches = search_images(query, page=page, per_page=per_page)
    if results.message:
        raise ApiError(results.message)
    if page > max(results.num_pages, 1):
        raise ApiError(f"There is no page {page}; there are {results.num_pages}.", 404)
    return JsonResponse({"query": query, **search_json(request, results, matches)})


@api_view("POST")
def search_by_image(request):
    try:
        described = describe_query_photo(read_upload(_one_file(request)))
    except RejectedUpload as exc:
        raise ApiError(str(exc), exc.status) from None
    except CaptioningBusy as exc:
        raise ApiError(str(exc), 503, {"Retry-After": str(RETRY_AFTER)}) from None
    results, matches = search_images(described.fields())
    return JsonResponse(
        {
            "caption": described.caption,
            "score": described.score,  # = log_prob, kept for existing clients
            "log_prob": described.score,
            "confidence": described.confidence,
            "confidence_label": described.confidence_label,
            "model_version": described.model_version,
            **search_json(request, results, matches),
        }
    )


@api_view("GET", "POST", post_needs_login=True)
def images(request):
    """GET: the gallery, newest first. POST (logged in): upload one photo in the field 'file'."""
    if request.method == "POST":
        outcome = upload_file(_one_file(request), request.user)
        if outcome.error:
            raise ApiError(outcome.error, outcome.status)
        outcome.image.refresh_from_db()  # in-process captioning may have finished already
        response = JsonResponse(
            {"created": outcome.created, "image": image_json(request, outcome.image, detail=True)},
            status=outcome.status,
        )
        response["Location"] = reverse("gallery:api-image", args=[outcome.image.pk])
        return response
    per_page = _positive_int(request, "per_page", settings.IMAGESEARCH_PAGE_SIZE, MAX_PER_PAGE)
    paginator = Paginator(visible_images(request.user), per_page)
    number = _positive_int(request, "page", 1)
    try:
        page = paginator.page(number)
    except EmptyPage:
        raise ApiError(f"There is no page {number}; there are {paginator.num_pages}.", 404) from None
    return JsonResponse(
        {
            "page": page.number,
            "per_page": per_page,
            "num_pages": paginator.num_pages,
            "total": paginator.count,
            "results": [image_json(request, image) for image in page],
        }
    )


@api_view("GET")
def image(request, pk):
    found = visible_images(request.user).filter(pk=pk).first()
    if found is None:
        raise ApiError(f"There is no image {pk}.", 404)
    return JsonResponse(image_json(request, found, detail=True))
