"""Rebuild the search index from every visible image's active caption."""
from django.core.management.base import BaseCommand
from tqdm import tqdm

from gallery.models import Caption
from searchindex import index as search_index


class Command(BaseCommand):
    help = (
        "Replace the search index with the active caption of every non-hidden image. Safe while the site "
        "serves searches: they use the old index until the new one commits."
    )

    def handle(self, *args, **options):
        captions = Caption.objects.filter(is_active=True, image__hidden=False).order_by("image_id")
        total = captions.count()
        rows = captions.values_list("image_id", "text").iterator(chunk_size=10_000)
        with tqdm(total=total, unit="caption", desc="Indexing") as bar:
            count = search_index.rebuild(rows, progress=bar.update)
        self.stdout.write(f"Indexed {count} caption(s).")
