"""Searching the gallery: by words, and by a photo (captioned, then searched with its caption)."""
import base64
from dataclasses import dataclass

import celery.exceptions
from django.conf import settings

from searchindex import index as search_index

from .ingest import inspect_upload
from .models import Image


class CaptioningBusy(RuntimeError):
    """No worker captioned the query photo in time; the person should try again."""


@dataclass(frozen=True)
class QueryCaption:
    caption: str
    score: float
    model_version: str


def describe_query_photo(data: bytes) -> QueryCaption:
    """Caption a query photo without storing it; a worker does it when a broker is configured.

    Raises RejectedUpload for a file that is not an acceptable image, CaptioningBusy when no
    worker answers within IMAGESEARCH_QUERY_CAPTION_TIMEOUT seconds.
    """
    from .tasks import caption_query_image

    inspect_upload(data)
    payload = base64.b64encode(data).decode("ascii")
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # In-process: a plain call. Going through Celery's eager machinery here would trip its
        # process-wide "never join a result inside a task" flag when uploads caption concurrently.
        answer = caption_query_image.run(payload)
        return QueryCaption(answer["caption"], answer["score"], answer["model_version"])
    try:
        result = caption_query_image.apply_async((payload,), expires=settings.IMAGESEARCH_QUERY_CAPTION_TIMEOUT)
        answer = result.get(timeout=settings.IMAGESEARCH_QUERY_CAPTION_TIMEOUT, propagate=True)
    except (celery.exceptions.TimeoutError, OSError) as exc:
        raise CaptioningBusy("The captioning service is busy; please try again in a moment.") from exc
    return QueryCaption(answer["caption"], answer["score"], answer["model_version"])


def search_images(query: str, *, page: int = 1, per_page: int | None = None, exclude_ids=()):
    """Run a text query and attach the images (with their captions) to the hits, in rank order.

    Hidden images are never in the index (see captions.sync_index), so they cannot be found.
    """
    results = search_index.search(
        query, page=page, per_page=per_page or settings.IMAGESEARCH_PAGE_SIZE, exclude_ids=exclude_ids
    )
    images = Image.objects.prefetch_related("captions").in_bulk([hit.doc_id for hit in results.hits])
    return results, [(hit, images[hit.doc_id]) for hit in results.hits if hit.doc_id in images]
