"""Describe the gallery again after a new model is installed; human captions stay active."""
import argparse
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from captioning.services import model_meta
from gallery.curation import described_by, to_describe
from gallery.tasks import enqueue_captioning


class Command(BaseCommand):
    help = (
        "Queue images for a new description (caption, alternatives, tags, fingerprint) by the installed model. "
        "Each image switches to its new description atomically when it is ready; search keeps working meanwhile. "
        "Human captions are never replaced; an image already described by the installed model is not done again."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", dest="every", help="Every image.")
        which.add_argument(
            "--model-older-than", metavar="VERSION", help="Images with no model description of VERSION or newer."
        )
        parser.add_argument("--wait", action="store_true", help="Follow the workers with a progress bar until all are done.")
        parser.add_argument(
            "--stall-timeout", type=float, default=300, metavar="SECONDS",
            help="With --wait: give up after this long without progress (default 300).",
        )
        parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help=argparse.SUPPRESS)

    def handle(self, *args, every, model_older_than, wait, stall_timeout, poll, **options):
        installed = model_meta().get("version", "")
        ids = to_describe(installed, None if every else model_older_than)
        before = described_by(installed)
        batch = settings.IMAGESEARCH_CAPTION_TASK_SIZE
        with tqdm(total=len(ids), desc="described", unit="img", disable=not ids) as bar:
            for start in range(0, len(ids), batch):
                if not enqueue_captioning(ids[start : start + batch]):
                    raise CommandError(
                        f"The task queue is unreachable; {start} of {len(ids)} image(s) were queued. Is Redis running?"
                    )
                bar.update(min(len(ids), described_by(installed) - before) - bar.n)
            self.stdout.write(f"Queued {len(ids)} image(s) for re-captioning.")
            if wait:
                self._follow(bar, lambda: min(len(ids), described_by(installed) - before), stall_timeout, poll)

    def _follow(self, bar, done, stall_timeout: float, poll: float) -> None:
        """Update the bar from the database until every queued image is described or progress stalls."""
        last_change = time.monotonic()
        while bar.n < bar.total:
            count = done()
            if count > bar.n:
                bar.update(count - bar.n)
                last_change = time.monotonic()
            elif time.monotonic() - last_change > stall_timeout:
                raise CommandError(
                    f"No progress for {stall_timeout:g} s ({bar.n} of {bar.total} described); are the workers running? "
                    "The rest stays queued (running the command again queues it again; done images are skipped)."
                )
            else:
                time.sleep(poll)
