"""Re-enqueue images left pending or processing too long (also run by Celery beat)."""
from django.conf import settings
from django.core.management.base import BaseCommand

from gallery.tasks import caption_pending


class Command(BaseCommand):
    help = "Queue captioning again for images stuck pending/processing (a killed worker, a lost queue)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, default=settings.IMAGESEARCH_PENDING_SWEEP_MINUTES,
                            metavar="MINUTES")

    def handle(self, *args, older_than, **options):
        count = caption_pending.run(older_than)
        self.stdout.write(f"Re-enqueued {count} image(s) waiting for more than {older_than:g} minute(s).")
