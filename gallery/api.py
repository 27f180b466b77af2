"""The JSON API (docs/api.md; the OpenAPI schema is generated from this module at /api/schema).

Built on Django REST framework. Requests authenticate with an API token
(`Authorization: Bearer <token>`, tokens made on /account/tokens/) or with the browser's session,
whose unsafe requests need the CSRF token. Every error is a JSON body {"error": "..."} with a
fitting status (see `exception_handler`); rate limits answer 429 with Retry-After.
"""
from dataclasses import asdict

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.paginator import EmptyPage, Paginator
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from .ingest import RejectedUpload, read_upload, upload_file
from .models import Image
from .querying import RETRY_AFTER, CaptioningBusy, describe_query_photo, search_by_photo, search_images
from .serializers import (
    ErrorSerializer,
    ImageDetailSerializer,
    ImagePageSerializer,
    PhotoFileSerializer,
    PhotoSearchSerializer,
    UploadSerializer,
    WordSearchSerializer,
)
from .throttling import ClientRateThrottle

MAX_PER_PAGE = 100
LOGIN_HINT = "Authentication required: send 'Authorization: Bearer <token>' (tokens: /account/tokens/) or log in at /accounts/login/."


class ApiError(exceptions.APIException):
    """Raised inside an API view; becomes {"error": message} with the status."""

    def __init__(self, message: str, status_code: int = 400, headers=None):
        super().__init__(message)
        self.status_code, self.headers = status_code, headers or {}


def _message(detail) -> str:
    """One readable sentence from a DRF error detail (a string, a list or a dict of them)."""
    if isinstance(detail, dict):
        return " ".join(f"{field}: {_message(value)}" if field != "non_field_errors" else _message(value) for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_message(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    """Every error as {"error": message}: DRF's own, ours, and a body Django refused to parse
    (too many files, too large), which would otherwise be Django's HTML 400."""
    if isinstance(exc, RequestDataTooBig):
        exc = ApiError(str(exc), 413)
    elif isinstance(exc, SuspiciousOperation):  # TooManyFilesSent, TooManyFieldsSent, a bad multipart body
        exc = ApiError(f"The request body was refused: {exc}", 400)
    elif isinstance(exc, exceptions.NotAuthenticated):
        exc.detail = LOGIN_HINT
    response = drf_exception_handler(exc, context)
    if response is not None:
        response.data = {"error": _message(response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data)}
        for name, value in getattr(exc, "headers", {}).items():
            response[name] = value
    return response


class GalleryAccess(permissions.BasePermission):
    """Public galleries are open to read; a private one (IMAGESEARCH_PUBLIC=false) needs a login."""

    def has_permission(self, request, view):
        return settings.IMAGESEARCH_PUBLIC or request.user.is_authenticated


class UploadNeedsLogin(permissions.BasePermission):
    def has_permission(self, request, view):
        return request.method != "POST" or request.user.is_authenticated


class GalleryView(APIView):
    permission_classes = [GalleryAccess]
    # Rate-limit scope per method (settings.IMAGESEARCH_RATE_LIMITS); methods not named are not limited.
    rate_limits: dict[str, str] = {}

    def get_throttles(self):
        scope = self.rate_limits.get(self.request.method)
        return [ClientRateThrottle(scope)] if scope else []


def _positive_int(request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name, "")
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


def shown_images():
    """Images with what the API shows of them loaded in three queries."""
    return Image.objects.prefetch_related("captions", "tags")


def search_page(results, matches) -> dict:
    return {
        "page": results.page,
        "per_page": results.per_page,
        "num_pages": results.num_pages,
        "total": results.total,
        "interpretation": asdict(results.interpretation),
        "message": results.message,
        "results": [{"score": hit.score, "matched_terms": hit.matched_terms, "image": image} for hit, image in matches],
    }


ERRORS = {code: OpenApiResponse(ErrorSerializer) for code in (400, 401, 403, 404, 405, 413, 415, 429, 503)}
PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number, from 1."),
    OpenApiParameter("per_page", int, description=f"Results per page (at most {MAX_PER_PAGE})."),
]


class SearchView(GalleryView):
    rate_limits = {"GET": "search"}

    @extend_schema(
        operation_id="search",
        summary="Search the captions and tags by words",
        parameters=[OpenApiParameter("q", str, description='Words, "phrases" and -excluded words.'), *PAGE_PARAMETERS],
        responses={200: WordSearchSerializer, **ERRORS},
    )
    def get(self, request):
        query = request.query_params.get("q", "")
        page = _positive_int(request, "page", 1)
        per_page = _positive_int(request, "per_page", settings.IMAGESEARCH_PAGE_SIZE, MAX_PER_PAGE)
        results, matches = search_images(query, page=page, per_page=per_page)
        if results.message:
            raise ApiError(results.message)
        if page > max(results.num_pages, 1):
            raise ApiError(f"There is no page {page}; there are {results.num_pages}.", 404)
        return Response(WordSearchSerializer({"query": query, **search_page(results, matches)}, context={"request": request}).data)


class SearchByImageView(GalleryView):
    parser_classes = [MultiPartParser]
    rate_limits = {"POST": "search_by_image"}

    @extend_schema(
        operation_id="search_by_image",
        summary="Search with a photo: it is described by the captioning model, not stored",
        request={"multipart/form-data": PhotoFileSerializer},
        responses={200: PhotoSearchSerializer, **ERRORS},
    )
    def post(self, request):
        try:
            described = describe_query_photo(read_upload(_one_file(request)))
        except RejectedUpload as exc:
            raise ApiError(str(exc), exc.status) from None
        except CaptioningBusy as exc:
            raise ApiError(str(exc), 503, {"Retry-After": str(RETRY_AFTER)}) from None
        results, matches = search_by_photo(described)
        answer = {
            "caption": described.caption, "score": described.score,
            "confidence": described.confidence, "confidence_label": described.confidence_label,
            "model_version": described.model_version, "tags": described.tags(), "objects": described.object_tags(),
        }
        return Response(PhotoSearchSerializer({**answer, **search_page(results, matches)}, context={"request": request}).data)


class ImagesView(GalleryView):
    permission_classes = [GalleryAccess, UploadNeedsLogin]
    rate_limits = {"POST": "upload"}

    @extend_schema(
        operation_id="images_list", summary="The gallery, newest first", parameters=PAGE_PARAMETERS,
        responses={200: ImagePageSerializer, **ERRORS},
    )
    def get(self, request):
        per_page = _positive_int(request, "per_page", settings.IMAGESEARCH_PAGE_SIZE, MAX_PER_PAGE)
        paginator = Paginator(shown_images().visible_to(request.user), per_page)
        number = _positive_int(request, "page", 1)
        try:
            page = paginator.page(number)
        except EmptyPage:
            raise ApiError(f"There is no page {number}; there are {paginator.num_pages}.", 404) from None
        body = {"page": page.number, "per_page": per_page, "num_pages": paginator.num_pages, "total": paginator.count, "results": page}
        return Response(ImagePageSerializer(body, context={"request": request}).data)

    @extend_schema(
        operation_id="images_upload",
        summary="Upload one photo (logged in); the same photo again answers 200 with the stored image",
        request={"multipart/form-data": PhotoFileSerializer},
        responses={201: UploadSerializer, 200: UploadSerializer, 409: OpenApiResponse(ErrorSerializer), **ERRORS},
    )
    def post(self, request):
        outcome = upload_file(_one_file(request), request.user)
        if outcome.error:
            raise ApiError(outcome.error, outcome.status)
        image = shown_images().get(pk=outcome.image.pk)  # in-process captioning may have finished already
        body = UploadSerializer({"created": outcome.created, "image": image}, context={"request": request}).data
        return Response(body, status=outcome.status, headers={"Location": reverse("gallery:api-image", args=[image.pk])})


class ImageView(GalleryView):
    @extend_schema(operation_id="image", summary="One image with every caption and the attention maps", responses={200: ImageDetailSerializer, **ERRORS})
    def get(self, request, pk: int):
        found = shown_images().visible_to(request.user).filter(pk=pk).first()
        if found is None:
            raise ApiError(f"There is no image {pk}.", 404)
        return Response(ImageDetailSerializer(found, context={"request": request}).data)


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE"])
@authentication_classes([])
@permission_classes([permissions.AllowAny])
def unknown(request, path=""):
    """Any other /api/ path: a JSON 404, like every API error."""
    raise ApiError(f"There is no API endpoint {request.path}; see /api/schema.", status.HTTP_404_NOT_FOUND)
