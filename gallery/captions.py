"""The active-caption rules, the photo's tags, and keeping the search index in step with them.

Rules: an image has at most one active caption; a human caption always wins over a model
caption; a new model caption becomes active only while no human caption is active; captioning
the same image twice with the same model version changes nothing. Every change to what is
active, to the tags or to whether the image is visible re-indexes the image in the same
transaction, with its whole description (gallery.descriptions).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from captioning.fingerprints import to_bytes
from captioning.services import model_meta
from imagesearch.bulk import BulkWriter, copy_escape
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
    return _descriptions(Caption.objects.filter(is_active=True, image__hidden=False), weights)


def _descriptions(active_captions, weights: SearchWeights | None):
    """(image id, weighted fields) of these active captions' images, in id order.

    Tags are read as plain rows, 2,000 images' at a time: a photo has a few hundred, and a model
    instance each cost more than the rest of storing a captioned batch.
    """
    weights = weights or search_weights()
    chunk = []
    for caption in active_captions.order_by("image_id").iterator(chunk_size=2_000):
        chunk.append(caption)
        if len(chunk) == 2_000:
            yield from _described(chunk, weights)
            chunk = []
    yield from _described(chunk, weights)


def _described(captions: list[Caption], weights: SearchWeights):
    tags = {caption.image_id: [] for caption in captions}
    kept = Tag.objects.filter(image_id__in=list(tags), removed=False).order_by("image_id", "-probability", "word")
    for image_id, kind, word, probability in kept.values_list("image_id", "kind", "word", "probability"):
        tags[image_id].append((kind, word, probability))
    for caption in captions:
        yield caption.image_id, _description_fields(caption, tags[caption.image_id], weights)


def sync_index(image: Image) -> None:
    """Index the image's description, or drop it from the index when hidden or uncaptioned."""
    sync_indexes([image])


def sync_indexes(images) -> None:
    """Index the images' descriptions, dropping the hidden or uncaptioned ones, in one index transaction.

    Whether an image is hidden is read from the objects given (callers hold them current).
    """
    visible = [image.pk for image in images if not image.hidden]
    described = dict(_descriptions(Caption.objects.filter(is_active=True, image_id__in=visible), None))
    search_index.delete_documents([image.pk for image in images if image.pk not in described])
    search_index.index_documents(described.items())


def _replace_model_tags(descriptions: list["ModelDescription"], model_version: str) -> None:
    """The images' tags of each kind become this model version's; words a curator removed stay removed."""
    image_ids = [d.image_id for d in descriptions]
    removed = set(Tag.objects.filter(image_id__in=image_ids, removed=True).values_list("image_id", "kind", "word"))
    Tag.objects.filter(image_id__in=image_ids, kind__in=Tag.Kind.values, removed=False).delete()
    lines = {}  # the most probable of a word's occurrences (a word cut to 64 characters may repeat)
    version = copy_escape(model_version)
    for d in descriptions:
        for kind, words in ((Tag.Kind.CONCEPT, d.concepts), (Tag.Kind.OBJECT, d.objects)):
            for word, p in words:
                key = (d.image_id, kind, word[:64])
                if key not in removed and key not in lines:
                    lines[key] = f"{d.image_id}\t{kind}\t{copy_escape(key[2])}\t{float(p)!r}\t{version}\tf\n"
    # A batch of photos has thousands of tags: written by COPY (imagesearch.bulk).
    writer = BulkWriter()
    writer.write_lines(Tag, ("image_id", "kind", "word", "probability", "model_version", "removed"), list(lines.values()))
    writer.finish()


def _replace_fingerprints(descriptions: list["ModelDescription"], projection: str, model_version: str) -> None:
    """The images' fingerprints become this model version's (or none, for a model without fingerprints)."""
    with_print = [d for d in descriptions if d.fingerprint is not None and projection]
    printed = {d.image_id for d in with_print}
    Fingerprint.objects.filter(image_id__in=[d.image_id for d in descriptions if d.image_id not in printed]).delete()
    Fingerprint.objects.bulk_create(
        [Fingerprint(image_id=d.image_id, projection=projection, model_version=model_version, vector=to_bytes(d.fingerprint))
         for d in with_print],
        update_conflicts=True, unique_fields=["image"], update_fields=["projection", "model_version", "vector"],
    )


def _activate(captions: list[Caption]) -> None:
    """Each caption becomes its image's active one (one caption per image; two statements for all)."""
    Caption.objects.filter(image_id__in=[c.image_id for c in captions], is_active=True).update(is_active=False)
    Caption.objects.filter(pk__in=[c.pk for c in captions]).update(is_active=True)
    for caption in captions:
        caption.is_active = True


@dataclass(frozen=True, eq=False)  # eq would compare fingerprint arrays
class ModelDescription:
    """A model's description of one stored photo, as add_model_captions stores it.

    alternatives: [(text, score), ...] of the beam, best first; concepts and objects: [(word,
    probability), ...]; fingerprint: the photo's fingerprint vector or None.
    """

    image_id: int
    text: str
    score: float | None = None
    confidence: float | None = None
    attention: list | None = None
    alternatives: Sequence = ()
    concepts: Sequence = ()
    objects: Sequence = ()
    fingerprint: Any = None


def add_model_caption(image: Image, text: str, *, model_version: str, fingerprint_projection: str = "", **description) -> Caption:
    """Store a model's description of one image (see add_model_captions); ``description``: the
    other fields of ModelDescription. Raises Image.DoesNotExist when the image is gone."""
    stored = add_model_captions(
        [ModelDescription(image.pk, text, **description)], model_version=model_version, fingerprint_projection=fingerprint_projection
    )
    if image.pk not in stored:
        raise Image.DoesNotExist(f"Image {image.pk} no longer exists.")
    return stored[image.pk]


@transaction.atomic
def add_model_captions(descriptions, *, model_version: str, fingerprint_projection: str = "") -> dict[int, Caption]:
    """Store a model's descriptions (caption, alternatives, concept and object tags, fingerprint)
    and mark the images done; returns each stored image's caption of this model version.

    Idempotent per (image, model version): a description of a version the image already has
    changes nothing but the status. Images deleted meanwhile are skipped. One transaction and a
    fixed handful of statements for the whole batch: a worker stores and indexes a batch of 16
    photos in about the time one photo took statement by statement.
    """
    wanted = {d.image_id: d for d in descriptions}
    # Locked in id order, so that two transactions over overlapping images cannot deadlock.
    images = list(Image.objects.select_for_update().filter(pk__in=list(wanted)).order_by("pk"))
    ids = [image.pk for image in images]
    model_captions = Caption.objects.filter(image_id__in=ids, source=Caption.Source.MODEL, model_version=model_version)
    described_before = set(model_captions.values_list("image_id", flat=True))
    new = [wanted[pk] for pk in ids if pk not in described_before]
    if new:
        Caption.objects.bulk_create(
            [
                Caption(
                    image_id=d.image_id, text=d.text, source=Caption.Source.MODEL, model_version=model_version, score=d.score,
                    confidence=d.confidence, attention=d.attention, alternatives=[[t, s] for t, s in d.alternatives],
                )
                for d in new
            ],
            ignore_conflicts=True,  # the images' locks make a conflict impossible for writers that take them
        )
        _replace_model_tags(new, model_version)
        _replace_fingerprints(new, fingerprint_projection, model_version)
    captions = {caption.image_id: caption for caption in model_captions}
    active = {caption.image_id: caption for caption in Caption.objects.filter(image_id__in=ids, is_active=True)}
    # A person's caption stays active; otherwise this version's caption becomes the active one.
    promoted = [
        caption for pk, caption in captions.items()
        if pk not in active or (active[pk].source != Caption.Source.HUMAN and active[pk].pk != caption.pk)
    ]
    if promoted:
        _activate(promoted)
    Image.objects.filter(pk__in=ids).update(status=Image.Status.DONE, error="", status_changed_at=timezone.now())
    sync_indexes(images)  # `hidden` is current: the rows were just read under their locks
    return captions


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
    _activate([caption])
    sync_index(image)
    return caption


@transaction.atomic
def remove_tag(tag: Tag) -> None:
    """A curator removes a wrong tag: it is no longer shown or searchable (re-indexed at once)."""
    image = Image.objects.select_for_update().get(pk=tag.image_id)
    Tag.objects.filter(pk=tag.pk).update(removed=True)
    sync_index(image)
