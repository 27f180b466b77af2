"""The active-caption rules, the photo's tags, and keeping the search index in step with them.

Rules: an image has at most one active caption; a human caption always wins over a model
caption; a new model caption becomes active only while no human caption is active; captioning
the same image twice with the same model version changes nothing. Every change to what is
active, to the tags or to whether the image is visible re-indexes the image in the same
transaction, with its whole description (gallery.descriptions).
"""

from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.utils import timezone

from captioning.fingerprints import to_bytes
from captioning.services import model_meta
from searchindex import index as search_index

from .descriptions import SearchWeights, document_fields
from .models import Caption, Fingerprint, Image, Tag


def search_weights() -> SearchWeights:
    """The weights of the description sources, as tuned for the installed model."""
    return SearchWeights.from_meta(model_meta())


def image_fields(image: Image, caption: Caption, weights: SearchWeights) -> list:
    """The weighted fields of a photo's description: its active caption, the beam's alternatives
    (only while a model caption is active: a person's caption replaces the model's guesses), tags."""
    return _description_fields(caption, list(image.tags.filter(removed=False).values_list("kind", "word", "probability")), weights)


def _description_fields(caption: Caption, tags: list, weights: SearchWeights) -> list:
    """``tags``: (kind, word, probability) of the image's kept tags."""
    by_kind = {kind: [] for kind in Tag.Kind.values}
    for kind, word, probability in tags:
        by_kind[kind].append((word, probability))
    alternatives = caption.alternatives if caption.source == Caption.Source.MODEL else ()
    return document_fields(
        caption.text, alternatives=alternatives, concepts=by_kind[Tag.Kind.CONCEPT], objects=by_kind[Tag.Kind.OBJECT], weights=weights
    )


def all_descriptions(weights: SearchWeights | None = None):
    """(image id, weighted fields) of every visible image's active description, in id order (for rebuilding the index)."""
    weights = weights or search_weights()
    captions = (
        Caption.objects.filter(is_active=True, image__hidden=False)
        .select_related("image")
        .prefetch_related(Prefetch("image__tags", queryset=Tag.objects.filter(removed=False), to_attr="kept_tags"))
        .order_by("image_id")
    )
    for caption in captions.iterator(chunk_size=2_000):
        tags = [(tag.kind, tag.word, tag.probability) for tag in caption.image.kept_tags]
        yield caption.image_id, _description_fields(caption, tags, weights)


def sync_index(image: Image) -> None:
    """Index the image's description, or drop it from the index when hidden or uncaptioned."""
    caption = image.captions.filter(is_active=True).first()
    if caption is None or image.hidden:
        search_index.delete_document(image.pk)
    else:
        search_index.index_document(image.pk, image_fields(image, caption, search_weights()))


def _replace_model_tags(image: Image, tags_by_kind: dict, model_version: str) -> None:
    """The image's tags of each kind become this model version's; words a curator removed stay removed."""
    removed = set(image.tags.filter(removed=True).values_list("kind", "word"))
    image.tags.filter(kind__in=list(tags_by_kind), removed=False).delete()
    Tag.objects.bulk_create(
        [
            Tag(image=image, kind=kind, word=word[:64], probability=float(p), model_version=model_version)
            for kind, words in tags_by_kind.items()
            for word, p in words
            if (kind, word[:64]) not in removed
        ],
        ignore_conflicts=True,
    )


def _replace_fingerprint(image: Image, fingerprint, projection: str, model_version: str) -> None:
    """The image's fingerprint becomes this model version's (or none, for a model without fingerprints)."""
    if fingerprint is None or not projection:
        Fingerprint.objects.filter(image=image).delete()
        return
    Fingerprint.objects.update_or_create(
        image=image, defaults={"projection": projection, "model_version": model_version, "vector": to_bytes(fingerprint)}
    )


def _activate(image: Image, caption: Caption) -> None:
    image.captions.filter(is_active=True).exclude(pk=caption.pk).update(is_active=False)
    if not caption.is_active:
        caption.is_active = True
        caption.save(update_fields=["is_active"])


@transaction.atomic
def add_model_caption(
    image: Image, text: str, *, model_version: str, score=None, attention=None, alternatives=(), concepts=(), objects=(),
    fingerprint=None, fingerprint_projection: str = "", confidence=None,
) -> Caption:
    """Store a model's description (caption, alternatives, concept and object tags, fingerprint) and mark the image done.

    Idempotent per (image, model version): a second call with the same version changes nothing.
    """
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
                    confidence=confidence,
                    attention=attention,
                    alternatives=[[t, s] for t, s in alternatives],
                )
            _replace_model_tags(image, {Tag.Kind.CONCEPT: concepts, Tag.Kind.OBJECT: objects}, model_version)
            _replace_fingerprint(image, fingerprint, fingerprint_projection, model_version)
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


@transaction.atomic
def remove_tag(tag: Tag) -> None:
    """A curator removes a wrong tag: it is no longer shown or searchable (re-indexed at once)."""
    image = Image.objects.select_for_update().get(pk=tag.image_id)
    Tag.objects.filter(pk=tag.pk).update(removed=True)
    sync_index(image)
