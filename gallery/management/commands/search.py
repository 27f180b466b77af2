"""Search the gallery's index from the command line: words, a file of queries, or query photos."""
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from gallery.ingest import RejectedUpload
from gallery.querying import CaptioningBusy, describe_query_photo, search_by_photo, search_images


def result_rows(matches) -> list[dict]:
    """The hits with each image's original file name and active caption."""
    rows = []
    for hit, image in matches:
        caption = image.active_caption
        rows.append({"id": hit.doc_id, "file": image.original_name, "score": hit.score, "caption": caption.text if caption else ""})
    return rows


def run_query(query: str, limit: int) -> dict:
    """The words' best hits."""
    results, matches = search_images(query, per_page=limit)
    out = {"query": query, "results": result_rows(matches)}
    if results.message:
        out["message"] = results.message
    return out


def run_photo_query(path: str, limit: int) -> dict:
    """Describe a photo exactly as an uploaded one would be, then search with its whole description
    and its fingerprint (copies of it first).

    A file that cannot be read or is not an acceptable image gives an "error" instead of results.
    """
    try:
        data = Path(path).read_bytes()
        described = describe_query_photo(data)
    except OSError as exc:
        return {"file": path, "error": f"Cannot read {path}: {exc.strerror}."}
    except (RejectedUpload, CaptioningBusy) as exc:
        return {"file": path, "error": str(exc)}
    _, matches = search_by_photo(described, per_page=limit)
    return {
        "file": path,
        "caption": described.caption,
        "model_version": described.model_version,
        "tags": described.tags(),
        "results": result_rows(matches),
    }


class Command(BaseCommand):
    help = (
        'Search photos: search "QUERY" [--limit K] [--json]; --queries FILE runs one query per line; '
        "--image FILE... searches with each photo's description. Both print one JSON line per query."
    )

    def add_arguments(self, parser):
        parser.add_argument("query", nargs="?", help='Words, "quoted phrases", -excluded words.')
        parser.add_argument("--limit", type=int, default=10, help="How many results (default 10, at most 1000).")
        parser.add_argument("--json", action="store_true", help="Print the result as one JSON line.")
        parser.add_argument("--queries", metavar="FILE", help="Run each non-empty line of FILE as a query.")
        parser.add_argument("--image", metavar="FILE", nargs="+", help="Find photos like each of these photos.")

    def handle(self, *args, **options):
        query, limit, queries, photos = options["query"], options["limit"], options["queries"], options["image"]
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        if sum(value is not None for value in (query, queries, photos)) != 1:
            raise CommandError("Give one of: a QUERY, --queries FILE, --image FILE...")
        if photos:
            for path in photos:
                self.stdout.write(_dumps(run_photo_query(path, limit)))
            return
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
