"""Export the image-to-caption mapping (one row per image, its active caption)."""
import csv
import json

from django.core.management.base import BaseCommand

from gallery.models import Image

FIELDS = ["original_name", "sha256", "caption", "source", "model_version", "score"]


def caption_rows():
    for image in Image.objects.order_by("pk").prefetch_related("captions").iterator(chunk_size=500):
        caption = image.active_caption
        yield {
            "original_name": image.original_name,
            "sha256": image.sha256,
            "caption": caption.text if caption else "",
            "source": caption.source if caption else "",
            "model_version": caption.model_version if caption else "",
            "score": caption.score if caption else None,
        }


class Command(BaseCommand):
    help = "Write every image's file name, SHA-256 and active caption as CSV or JSON."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--output", help="File to write (default: standard output).")

    def handle(self, *args, format, output, **options):
        handle = open(output, "w", newline="", encoding="utf-8") if output else self.stdout
        try:
            if format == "csv":
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows(caption_rows())
            else:
                handle.write(json.dumps(list(caption_rows()), ensure_ascii=False, indent=1) + "\n")
        finally:
            if output:
                handle.close()
