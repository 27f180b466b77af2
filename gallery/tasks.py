"""Celery tasks: caption stored photos, caption query photos, sweep up stuck work.

All tasks are idempotent (a model caption is unique per image and model version), acknowledged
late (a worker killed mid-task leaves the message to be delivered again) and retried with
backoff on transient errors. This module must not import TensorFlow: the captioner is loaded
lazily inside each worker process, after the prefork fork.
"""

import base64
import functools
import logging
import threading
from datetime import timedelta

import kombu.exceptions
import redis.exceptions
from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from captioning import services as captioning_services
from captioning.inference import describe_ahead

from .captions import ModelDescription, add_model_captions
from .models import Image

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    kombu.exceptions.OperationalError,
)

# Acknowledged late and re-delivered when a worker dies: CELERY_TASK_ACKS_LATE and
# CELERY_TASK_REJECT_ON_WORKER_LOST in the settings, for every task.
TASK_OPTIONS = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 6,
}


@worker_process_init.connect
def load_model_in_worker_process(**kwargs):
    """Load and warm up the captioner in each pool process right after the fork, before its first
    task: the first batch would otherwise also pay for TensorFlow's tracing and ONNX Runtime's
    planning (seconds)."""
    try:
        captioning_services.warm_up_captioner(photos=settings.IMAGESEARCH_CAPTION_BATCH)
    except Exception:  # a broken model must not kill the pool; tasks report the error instead
        logger.exception("The captioning model could not be loaded")


@functools.cache
def captioning_slots() -> threading.BoundedSemaphore:
    """How many captionings run at once in this process (IMAGESEARCH_EMBEDDED_CAPTIONING).

    It matters in the web process when tasks run in-process (no broker): each captioning holds a
    decoded photo and the networks' activations, so concurrent requests would add them up.
    A worker process runs one task at a time anyway.
    """
    return threading.BoundedSemaphore(settings.IMAGESEARCH_EMBEDDED_CAPTIONING)


def _mark(image_ids, status, error=""):
    Image.objects.filter(pk__in=image_ids).update(status=status, error=error, status_changed_at=timezone.now())


def fingerprint_projection_key(captioner) -> str:
    """The key of the projection that made the captioner's fingerprints ("" without fingerprints)."""
    return captioner.fingerprint.key if captioner.fingerprint is not None else ""

@shared_task(**TASK_OPTIONS)
def caption_images(image_ids: list[int]) -> dict:
    """Caption stored images IMAGESEARCH_CAPTION_BATCH at a time (one model call per batch) and
    store and index each batch's descriptions in a transaction of its own.

    The model describes a batch on a thread while this one stores the batch before and decodes
    the batch after (captioning.inference.describe_ahead): a task of several batches keeps the
    model busy. A batch stored stays stored when the task dies later; its re-delivery skips it.
    """
    captioner = captioning_services.get_captioner()
    version = captioner.version
    images = [
        image
        for image in Image.objects.filter(pk__in=image_ids).order_by("pk").prefetch_related("captions")
        if not any(c.source == "model" and c.model_version == version for c in image.captions.all())
    ]
    done_already = len(image_ids) - len(images)
    if not images:
        return {"captioned": 0, "failed": 0, "skipped": done_already}
    # Re-captioning keeps done images done: their current caption stays searchable until replaced.
    _mark([image.pk for image in images if image.status != Image.Status.DONE], Image.Status.PROCESSING)
    size = max(1, settings.IMAGESEARCH_CAPTION_BATCH)
    batches = (_readable(images[start : start + size]) for start in range(0, len(images), size))
    captioned = 0
    with captioning_slots():
        for readable, results in describe_ahead(captioner.describe_arrays, batches):
            add_model_captions(
                [
                    ModelDescription(
                        image.pk, d.caption.text, score=d.caption.score, confidence=d.caption.confidence,
                        attention=d.caption.attention_json(), alternatives=d.caption.alternatives, concepts=d.concepts,
                        objects=d.objects, fingerprint=d.fingerprint,
                    )
                    for image, d in zip(readable, results)
                ],
                model_version=version, fingerprint_projection=fingerprint_projection_key(captioner),
            )
            captioned += len(readable)
    return {"captioned": captioned, "failed": len(images) - captioned, "skipped": done_already}


def _readable(images: list[Image]) -> tuple[list[Image], list]:
    """The images whose files decode, and their network inputs; the others are marked failed."""
    readable, pixels = [], []
    for image in images:
        try:
            with image.file.open("rb") as handle:
                pixels.append(captioning_services.load_image(handle.read()))
            readable.append(image)
        except (OSError, ValueError) as exc:
            logger.warning("Image %s cannot be captioned: %s", image.pk, exc)
            _mark([image.pk], Image.Status.FAILED, f"The image could not be read for captioning: {exc}")
    return readable, pixels


@shared_task(acks_late=False, max_retries=0)
def caption_query_image(image_b64: str) -> dict:
    """Describe a search-by-image query photo exactly as a stored photo is described; it is not stored."""
    return describe_query_source(base64.b64decode(image_b64))


def describe_query_source(source) -> dict:
    """The answer of caption_query_image for encoded bytes or an already decoded photo
    (at least captioning.services.NETWORK_DECODE_SIZE a side); in-process callers pass the latter."""
    captioner = captioning_services.get_captioner()
    pixels = captioning_services.load_image(source)
    described = captioner.describe_arrays([pixels])[0]
    return {
        "caption": described.caption.text,
        "score": described.caption.score,
        "confidence": described.caption.confidence,
        "model_version": captioner.version,
        "alternatives": [list(a) for a in described.caption.alternatives],
        "concepts": [list(c) for c in described.concepts],
        "objects": [list(o) for o in described.objects],
        "fingerprint": None if described.fingerprint is None else [float(x) for x in described.fingerprint],
        "fingerprint_projection": fingerprint_projection_key(captioner),
    }


@shared_task(**TASK_OPTIONS)
def caption_pending(older_than_minutes: float = 10) -> int:
    """Re-enqueue images left pending or processing for too long (a killed worker, a lost queue)."""
    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    stuck = list(
        Image.objects.filter(
            status__in=[Image.Status.PENDING, Image.Status.PROCESSING], status_changed_at__lte=cutoff
        ).values_list("pk", flat=True)
    )
    if stuck:
        # Touch them so the next sweep does not send them again while they wait in the queue.
        Image.objects.filter(pk__in=stuck).update(status_changed_at=timezone.now())
        enqueue_captioning(stuck)
    return len(stuck)



def enqueue_captioning(image_ids: list[int]) -> bool:
    """Send captioning work to the workers; when the broker is down the images stay pending.

    Returns whether the work was queued. Pending images are picked up later by the sweep
    (`caption_pending`, also run by Celery beat), so nothing is lost.
    """
    size = max(1, settings.IMAGESEARCH_CAPTION_TASK_SIZE)
    try:
        for start in range(0, len(image_ids), size):
            caption_images.delay(image_ids[start : start + size])
    except Exception as exc:  # the broker being unreachable must not fail the upload
        logger.warning("Captioning not queued (%s); the pending sweep will retry.", exc)
        return False
    return True
