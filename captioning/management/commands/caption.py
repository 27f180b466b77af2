"""``manage.py caption FILE... [--beam N] [--json]``: caption image files without storing anything."""

import json
import os

from django.core.management.base import BaseCommand, CommandError

from captioning.images import InvalidImageError
from captioning.inception import preprocess_image
from captioning.services import get_captioner


class Command(BaseCommand):
    help = "Caption image files with the installed captioner and print the results (nothing is stored)."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", help="image files to caption")
        parser.add_argument("--beam", type=int, default=None, help="beam width (1 = greedy; default: settings)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object per line")

    def handle(self, *args, files, beam, as_json, **options):
        if beam is not None and beam < 1:
            raise CommandError("--beam must be at least 1")
        self.as_json = as_json
        failed = 0
        captioner = None
        chunk = 16  # files read per batch: bounds memory for long file lists
        for start in range(0, len(files), chunk):
            names = files[start : start + chunk]
            arrays = {name_index: _read(name) for name_index, name in enumerate(names)}
            good = {i: a for i, a in arrays.items() if not isinstance(a, str)}
            results = {}
            if good:
                if captioner is None:
                    try:
                        captioner = get_captioner()
                    except (OSError, ValueError) as exc:
                        raise CommandError(f"cannot load the captioning model: {exc}") from exc
                results = dict(zip(good, captioner.caption_arrays(list(good.values()), beam_width=beam)))
            for i, name in enumerate(names):
                if i in results:
                    self._print_result(name, results[i])
                else:
                    failed += 1
                    self._print_error(name, arrays[i])
        if failed:
            raise CommandError(f"{failed} of {len(files)} files could not be captioned", returncode=1)

    def _print_result(self, name, result):
        if self.as_json:
            line = {"file": name, "caption": result.text, "score": round(result.score, 4)}
            self.stdout.write(json.dumps(line, ensure_ascii=False))
        else:
            self.stdout.write(f"{result.score:8.3f}  {name}  {result.text}")

    def _print_error(self, name, message):
        if self.as_json:
            self.stdout.write(json.dumps({"file": name, "error": message}, ensure_ascii=False))
        else:
            self.stderr.write(f"{name}: error: {message}")


def _read(name):
    """The preprocessed image, or a one-line reason why the file cannot be captioned."""
    if os.path.isdir(name):
        return "is a directory, not an image file"
    try:
        return preprocess_image(name)
    except FileNotFoundError:
        return "file not found"
    except InvalidImageError as exc:
        return f"not an image: {exc}"
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
