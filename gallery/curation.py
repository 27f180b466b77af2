"""What curators do to images: hide, unhide, delete, re-caption. Each keeps the index in step."""
import re

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from searchindex import index as search_index

from . import tasks
from .captions import sync_index
from .models import Caption, Image


@transaction.atomic
def set_hidden(images, hidden: bool) -> int:
    """Hidden images disappear from public pages and from search."""
    changed = 0
    # Locked in id order, as the captioning worker locks its batch: the two cannot deadlock.
    for image in Image.objects.select_for_update().filter(pk__in=[i.pk for i in images]).order_by("pk"):
        image.hidden = hidden
        image.save(update_fields=["hidden"])
        sync_index(image)
        changed += 1
    return changed


def delete_images(images) -> int:
    """Delete images, their captions, their postings and, once committed, their files.

    The images are locked in id order before the index, as the captioning worker locks a batch
    before indexing it: deleting a document first (the index lock) and then its image could
    deadlock with a worker storing that image's caption.
    """
    with transaction.atomic():
        locked = list(Image.objects.select_for_update().filter(pk__in=[image.pk for image in images]).order_by("pk"))
        search_index.delete_documents([image.pk for image in locked])
        for image in locked:
            names = [image.file.name, image.thumbnail.name]
            image.delete()
            transaction.on_commit(lambda names=names: [default_storage.delete(n) for n in names if n])
    return len(locked)


def recaption(images) -> int:
    """Caption again with the installed model; done images keep their caption until it lands."""
    ids = [image.pk for image in images]
    Image.objects.filter(pk__in=ids).exclude(status=Image.Status.DONE).update(
        status=Image.Status.PENDING, error="", status_changed_at=timezone.now()
    )
    transaction.on_commit(lambda: tasks.enqueue_captioning(ids))
    return len(ids)


def version_key(version: str):
    """Natural order for model versions, so that v2 < v10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


def to_describe(installed: str, older_than: str | None = None) -> list[int]:
    """Ids of the images that the installed model has not described yet, in id order.

    ``older_than``: only those with no model description of that version or newer either.
    """
    threshold = version_key(older_than) if older_than is not None else None
    done = {
        image_id
        for image_id, model_version in Caption.objects.filter(source=Caption.Source.MODEL).values_list("image_id", "model_version")
        if model_version == installed or (threshold is not None and version_key(model_version) >= threshold)
    }
    return [pk for pk in Image.objects.order_by("pk").values_list("pk", flat=True) if pk not in done]


def described_by(version: str) -> int:
    """How many images have a model description of exactly ``version`` (the upgrade's progress)."""
    return Caption.objects.filter(source=Caption.Source.MODEL, model_version=version).values("image_id").distinct().count()
