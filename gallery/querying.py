"""Searching the gallery: by words, and by a photo (described like a stored photo, searched with its
whole description, its best candidates reordered by visual fingerprint so that copies come first)."""
import base64
import math
from dataclasses import dataclass, field, replace

import celery.exceptions
import numpy as np
from django.conf import settings

from captioning.fingerprints import from_bytes
from captioning.services import NETWORK_DECODE_SIZE
from searchindex import index as search_index

from .captions import image_fields, search_weights
from .descriptions import document_fields
from .ingest import inspect_upload, make_thumbnail
from .models import Fingerprint, Image, confidence_label
from .similarity import RERANK_DEPTH, rerank, uses_fingerprints
from .tasks import caption_query_image, captioning_slots, describe_query_source

# Seconds a client should wait before asking again when no worker captioned a query photo.
RETRY_AFTER = 10


class CaptioningBusy(RuntimeError):
    """No worker captioned the query photo in time; the person should try again."""


@dataclass(frozen=True)
class QueryCaption:
    """What the model says of a query photo: the caption people read, and the rest of its description."""

    caption: str
    score: float
    model_version: str
    alternatives: list = field(default_factory=list)  # [[text, score], ...]
    concepts: list = field(default_factory=list)  # [[word, probability], ...]
    objects: list = field(default_factory=list)  # [[label, probability], ...]
    fingerprint: list | None = None  # the visual fingerprint's numbers (captioning.fingerprints)
    fingerprint_projection: str = ""  # the key of the projection that made it
    confidence: float | None = None  # calibrated; None from a model without a calibration
    # The query photo as a small inline JPEG (data: URL), shown next to what the model sees; never stored.
    preview: str = ""

    @property
    def confidence_label(self) -> str:
        return confidence_label(self.confidence)

    @classmethod
    def from_answer(cls, answer: dict, preview: str = "") -> "QueryCaption":
        return cls(
            answer["caption"], answer["score"], answer["model_version"],
            answer.get("alternatives", []), answer.get("concepts", []), answer.get("objects", []),
            answer.get("fingerprint"), answer.get("fingerprint_projection", ""), answer.get("confidence"), preview,
        )

    def fields(self) -> list:
        """The weighted fields this photo would be indexed with: the query that finds photos like it."""
        return document_fields(
            self.caption, alternatives=self.alternatives, concepts=self.concepts, objects=self.objects, weights=search_weights()
        )

    def tags(self) -> list[str]:
        """The concept words confident enough to show."""
        floor = search_weights().tag_min_probability
        return [word for word, probability in self.concepts if probability >= floor]

    def object_tags(self) -> list[str]:
        """The object labels confident enough to show."""
        floor = search_weights().object_tag_min_probability
        return [word for word, probability in self.objects if probability >= floor]


def describe_query_photo(data: bytes) -> QueryCaption:
    """Caption a query photo without storing it; a worker does it when a broker is configured.

    The photo is decoded once in this process (the upload check), and its preview made from that
    decode; in-process, the network input too. Raises RejectedUpload for a file that is not an
    acceptable image, CaptioningBusy when no worker (or, in-process, no captioning slot:
    tasks.captioning_slots) is free within IMAGESEARCH_QUERY_CAPTION_TIMEOUT seconds.
    """
    timeout = settings.IMAGESEARCH_QUERY_CAPTION_TIMEOUT
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # In-process: a plain call. Going through Celery's eager machinery here would trip its
        # process-wide "never join a result inside a task" flag when uploads caption concurrently.
        # The slot bounds how many photos are decoded and described at once (memory).
        slots = captioning_slots()
        if not slots.acquire(timeout=timeout):
            raise CaptioningBusy("The captioning service is busy; please try again in a moment.")
        try:
            picture = inspect_upload(data, min_size=max(settings.IMAGESEARCH_THUMBNAIL_SIZE, NETWORK_DECODE_SIZE)).picture
            return QueryCaption.from_answer(describe_query_source(picture), _preview(picture))
        finally:
            slots.release()
    preview = _preview(inspect_upload(data).picture)
    payload = base64.b64encode(data).decode("ascii")
    try:
        result = caption_query_image.apply_async((payload,), expires=timeout)
        answer = result.get(timeout=timeout, propagate=True)
    except (celery.exceptions.TimeoutError, OSError) as exc:
        raise CaptioningBusy("The captioning service is busy; please try again in a moment.") from exc
    return QueryCaption.from_answer(answer, preview)


def _preview(picture) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(make_thumbnail(picture)).decode("ascii")


def search_images(query, *, page: int = 1, per_page: int | None = None, exclude_ids=()):
    """Run a query (text, or a description's weighted fields) and attach the images to the hits, in rank order.

    Hidden images are never in the index (see captions.sync_index), so they cannot be found.
    """
    results = search_index.search(
        query, page=page, per_page=per_page or settings.IMAGESEARCH_PAGE_SIZE, exclude_ids=exclude_ids
    )
    return results, _with_images(results.hits)


def search_like_photo(fields, fingerprint, projection: str, *, page: int = 1, per_page: int | None = None, exclude_ids=()):
    """Photos like one described by ``fields`` and ``fingerprint`` (of ``projection``): copies first.

    The text search's best RERANK_DEPTH candidates (or as many as the page needs, up to the
    index's page limit) are reordered by gallery.similarity.rerank, then paginated. Without a
    fingerprint, or with fingerprints switched off for the model, this is search_images.
    """
    per_page = per_page or settings.IMAGESEARCH_PAGE_SIZE
    weights = search_weights()
    window = max(RERANK_DEPTH, page * per_page)
    if fingerprint is None or not uses_fingerprints(weights) or window > search_index.MAX_PER_PAGE:
        return search_images(fields, page=page, per_page=per_page, exclude_ids=exclude_ids)
    first = search_index.search(fields, per_page=window, exclude_ids=exclude_ids)
    stored = dict(
        Fingerprint.objects.filter(image_id__in=[hit.doc_id for hit in first.hits], projection=projection)
        .values_list("image_id", "vector")
    )
    ranked = rerank(first.hits, np.asarray(fingerprint), {pk: from_bytes(v) for pk, v in stored.items()}, weights)
    num_pages = math.ceil(first.total / per_page)
    page = min(max(page, 1), max(num_pages, 1))
    hits = ranked[(page - 1) * per_page : page * per_page]
    return replace(first, hits=hits, page=page, per_page=per_page, num_pages=num_pages), _with_images(hits)


def search_by_photo(described: QueryCaption, *, page: int = 1, per_page: int | None = None):
    """Photos like a query photo: its whole description, then its fingerprint (copies of it first)."""
    return search_like_photo(
        described.fields(), described.fingerprint, described.fingerprint_projection, page=page, per_page=per_page
    )


def similar_images(image: Image, caption, *, per_page: int):
    """"More like this": photos like a stored one (its whole description and its fingerprint), itself excluded."""
    stored = Fingerprint.objects.filter(image=image).first()
    fingerprint = from_bytes(stored.vector) if stored else None
    return search_like_photo(
        image_fields(image, caption, search_weights()), fingerprint, stored.projection if stored else "",
        per_page=per_page, exclude_ids=[image.pk],
    )[1]


def _with_images(hits):
    images = Image.objects.prefetch_related("captions").in_bulk([hit.doc_id for hit in hits])
    return [(hit, images[hit.doc_id]) for hit in hits if hit.doc_id in images]


def split_by_relevance(matches):
    """(strong, weak): hits scoring below the relevance calibrated on dev are weaker matches."""
    floor = search_weights().weak_match_below
    return [m for m in matches if m[0].score >= floor], [m for m in matches if m[0].score < floor]
