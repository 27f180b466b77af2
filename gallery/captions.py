"""The active-caption rules and keeping the search index in step with them.

Rules: an image has at most one active caption; a human caption always wins over a model
caption; a new model caption becomes active only while no human caption is active; captioning
the same image twice with the same model version changes nothing. Every change to what is
active (or to whether the image is visible) re-indexes the image in the same transaction.
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from searchindex import index as search_index

from .models import Caption, Image


def sync_index(image: Image) -> None:
    """Index the image's active caption, or drop it from the index when hidden or uncaptioned."""
    caption = image.captions.filter(is_active=True).first()
    if caption is None or image.hidden:
        search_index.delete_document(image.pk)
    else:
        search_index.index_document(image.pk, caption.text)


def _activate(image: Image, caption: Caption) -> None:
    image.captions.filter(is_active=True).exclude(pk=caption.pk).update(is_active=False)
    if not caption.is_active:
        caption.is_active = True
        caption.save(update_fields=["is_active"])


@transaction.atomic
def add_model_caption(image: Image, text: str, *, model_version: str, score=None, attention=None) -> Caption:
    """Store a model caption and mark the image done; idempotent per (image, model version)."""
    image = Image.objects.select_for_update().get(pk=image.pk)
    caption = image.captions.filter(source=Caption.Source.MODEL, model_version=model_version).first()
    if caption is None:
        try:
            with transaction.atomic():
                caption = Caption.objects.create(
                    image=image,
                    text=text,
                    source=Caption.Source.MODEL,
                    model_version=model_version,
                    score=score,
                    attention=attention,
                )
        except IntegrityError:
            caption = image.captions.get(source=Caption.Source.MODEL, model_version=model_version)
    active = image.captions.filter(is_active=True).first()
    if active is None or active.source != Caption.Source.HUMAN:
        _activate(image, caption)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.DONE, error="", status_changed_at=timezone.now())
    sync_index(image)  # `hidden` is current: the row was just read under its lock
    return caption


@transaction.atomic
def set_human_caption(image: Image, text: str, *, user=None) -> Caption:
    """A person's caption becomes the active one at once (and is searchable at once)."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("A caption cannot be empty.")
    image = Image.objects.select_for_update().get(pk=image.pk)
    active = image.captions.filter(is_active=True).first()
    if active is not None and active.source == Caption.Source.HUMAN and active.text == text:
        return active
    caption = Caption.objects.create(image=image, text=text, source=Caption.Source.HUMAN, created_by=user)
    _activate(image, caption)
    sync_index(image)
    return caption
