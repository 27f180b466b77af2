"""Rebuild the search index from every visible image's active description (caption, alternatives, tags)."""
from django.core.management.base import BaseCommand
from tqdm import tqdm

from gallery.captions import all_descriptions
from gallery.models import Caption
from searchindex import index as search_index


class Command(BaseCommand):
    help = (
        "Replace the search index with the active description of every non-hidden image. Safe while the site "
        "serves searches: they use the old index until the new one commits."
    )

    def handle(self, *args, **options):
        total = Caption.objects.filter(is_active=True, image__hidden=False).count()
        with tqdm(total=total, unit="caption", desc="Indexing") as bar:
            count = search_index.rebuild(all_descriptions(), progress=bar.update)
        self.stdout.write(f"Indexed {count} caption(s).")
