"""Import photos from files or folders: validate, dedup, store, queue for captioning.

Captioning is queued in tasks of IMAGESEARCH_CAPTION_TASK_SIZE photos as the import goes (a
worker captions a batch several times faster per photo than single photos, and overlaps a task's
batches: gallery.tasks.caption_images).
"""
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from tqdm import tqdm

from gallery import tasks
from gallery.ingest import RejectedUpload, ingest_bytes
from gallery.models import Image


def iter_files(paths, recursive: bool):
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            yield from sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise CommandError(f"No such file or folder: {raw}")


class Command(BaseCommand):
    help = "Import image files or folders into the gallery; non-images are skipped with a reason."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--recursive", action="store_true", help="Descend into sub-folders.")
        parser.add_argument(
            "--wait", action="store_true", help="Return once every imported image is captioned (or failed)."
        )
        parser.add_argument("--timeout", type=float, default=None, help="With --wait: give up after N seconds.")

    def handle(self, *args, paths, recursive, wait, timeout, **options):
        files = list(iter_files(paths, recursive))
        imported, duplicates, rejected = [], 0, []
        batch = max(1, settings.IMAGESEARCH_CAPTION_TASK_SIZE)
        for path in tqdm(files, desc="Importing", unit="file", disable=None):
            try:
                result = ingest_bytes(path.read_bytes(), path.name, enqueue=False)
            except (RejectedUpload, OSError) as exc:
                rejected.append((path, str(exc)))
                continue
            if result.created:
                imported.append(result.image.pk)
                if len(imported) % batch == 0:
                    tasks.enqueue_captioning(imported[-batch:])
            else:
                duplicates += 1
        tasks.enqueue_captioning(imported[len(imported) - len(imported) % batch :])  # the last, partial batch
        self.stdout.write(f"Imported {len(imported)}, duplicates {duplicates}, rejected {len(rejected)}.")
        for path, reason in rejected:
            self.stdout.write(f"  rejected {path}: {reason}")
        if wait and imported:
            self.wait_for_captions(imported, timeout)

    def wait_for_captions(self, image_ids, timeout):
        """Poll until every image is done or failed, with a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finished_q = Q(status=Image.Status.DONE) | Q(status=Image.Status.FAILED)
        with tqdm(total=len(image_ids), desc="Captioning", unit="image", disable=None) as bar:
            while True:
                finished = Image.objects.filter(finished_q, pk__in=image_ids).count()
                bar.update(finished - bar.n)
                if finished == len(image_ids):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise CommandError(f"Timed out: {len(image_ids) - finished} image(s) still being captioned.")
                time.sleep(0.5)
        failed = Image.objects.filter(pk__in=image_ids, status=Image.Status.FAILED).count()
        self.stdout.write(f"Captioned {len(image_ids) - failed}, failed {failed}.")
