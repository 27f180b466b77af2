"""Seed an empty gallery with the sample photographs that scikit-image ships (for `make run`)."""
from pathlib import Path

from django.core.management.base import BaseCommand

from gallery.ingest import RejectedUpload, ingest_bytes
from gallery.models import Image

DEMO_PHOTOS = [
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
]


class Command(BaseCommand):
    help = "Add a few demo photos when the gallery is empty (does nothing otherwise)."

    def handle(self, *args, **options):
        if Image.objects.exists():
            self.stdout.write("Gallery not empty; no demo photos added.")
            return
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        added = 0
        for name in DEMO_PHOTOS:
            try:
                result = ingest_bytes((folder / name).read_bytes(), name)
            except (OSError, RejectedUpload) as exc:
                self.stderr.write(f"Skipped demo photo {name}: {exc}")
                continue
            added += result.created
        self.stdout.write(self.style.SUCCESS(f"Added {added} demo photos (scikit-image sample data)."))
