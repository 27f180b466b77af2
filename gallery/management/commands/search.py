"""Search the gallery's index from the command line, one query or a file of queries."""
import json

from django.core.management.base import BaseCommand, CommandError

from gallery.models import Image
from searchindex import index as search_index


def run_query(query: str, limit: int) -> dict:
    """The query's best hits with each image's original file name and active caption."""
    results = search_index.search(query, per_page=limit)
    images = Image.objects.prefetch_related("captions").in_bulk([hit.doc_id for hit in results.hits])
    rows = []
    for hit in results.hits:
        image = images.get(hit.doc_id)
        if image is None:  # deleted after the search ran
            continue
        caption = image.active_caption
        rows.append(
            {"id": hit.doc_id, "file": image.original_name, "score": hit.score, "caption": caption.text if caption else ""}
        )
    out = {"query": query, "results": rows}
    if results.message:
        out["message"] = results.message
    return out


class Command(BaseCommand):
    help = (
        'Search captions: search "QUERY" [--limit K] [--json], or --queries FILE to run one query per line '
        "in one process and print one JSON line per query."
    )

    def add_arguments(self, parser):
        parser.add_argument("query", nargs="?", help='Words, "quoted phrases", -excluded words.')
        parser.add_argument("--limit", type=int, default=10, help="How many results (default 10, at most 1000).")
        parser.add_argument("--json", action="store_true", help="Print the result as one JSON line.")
        parser.add_argument("--queries", metavar="FILE", help="Run each non-empty line of FILE as a query.")

    def handle(self, *args, **options):
        query, limit, queries = options["query"], options["limit"], options["queries"]
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        if (query is None) == (queries is None):
            raise CommandError('Give either a QUERY or --queries FILE.')
        if queries:
            try:
                with open(queries, encoding="utf-8", errors="replace") as handle:
                    lines = [line.rstrip("\r\n") for line in handle]
            except OSError as exc:
                raise CommandError(f"Cannot read {queries}: {exc.strerror}.") from exc
            for line in lines:
                if line.strip():
                    self.stdout.write(_dumps(run_query(line, limit)))
            return
        out = run_query(query, limit)
        if options["json"]:
            self.stdout.write(_dumps(out))
            return
        if "message" in out:
            self.stderr.write(out["message"])
        elif not out["results"]:
            self.stdout.write("No matches.")
        for row in out["results"]:
            self.stdout.write(f"{row['score']:.4f}  {row['file']} (id {row['id']})  {row['caption']}")


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)
