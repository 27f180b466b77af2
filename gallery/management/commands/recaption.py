"""Caption the gallery again after a new model is installed; human captions stay active."""
import re

from django.core.management.base import BaseCommand, CommandError

from gallery.tasks import enqueue_captioning
from gallery.models import Caption, Image


def version_key(version: str):
    """Natural order for model versions, so that v2 < v10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


class Command(BaseCommand):
    help = (
        "Queue images for captioning with the installed model. Each image switches to its new caption "
        "atomically when it is ready; search keeps working meanwhile. Human captions are never replaced."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", dest="every", help="Every image.")
        which.add_argument(
            "--model-older-than", metavar="VERSION", help="Images with no model caption of VERSION or newer."
        )

    def handle(self, *args, every, model_older_than, **options):
        ids = list(Image.objects.order_by("pk").values_list("pk", flat=True))
        if model_older_than:
            threshold = version_key(model_older_than)
            current = {
                image_id
                for image_id, version in Caption.objects.filter(source=Caption.Source.MODEL).values_list(
                    "image_id", "model_version"
                )
                if version_key(version) >= threshold
            }
            ids = [pk for pk in ids if pk not in current]
        if not enqueue_captioning(ids):
            raise CommandError("The task queue is unreachable; nothing was queued. Is Redis running?")
        self.stdout.write(f"Queued {len(ids)} image(s) for re-captioning.")
