"""Taking in photos: validate by content, store under a content-addressed path, thumbnail, record.

The same code path serves the web upload, the JSON API and `import_images`. An upload is
validated completely before anything is written, so a rejected file changes nothing. A stored
image is committed with status pending and its captioning is enqueued only after the commit,
so a broker outage delays captioning but never loses the upload (the recovery sweep
re-enqueues it).
"""

import hashlib
import io
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from captioning.files import write_atomic
from captioning.images import exif_orientation, open_upright_rgb

from . import tasks
from .models import Image, content_path

logger = logging.getLogger(__name__)

# Accepted formats (detected from the content, never from the name) and their stored extension.
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


class RejectedUpload(ValueError):
    """An upload that is not stored; the message is shown to the person who sent it.

    `status` is the HTTP status that fits the reason: 413 too large, 415 not an accepted image,
    400 empty or damaged.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Inspection:
    """An accepted upload: its format, upright size, and the picture its check decoded.

    ``picture`` is the one decode of the upload (upright RGB, reduced: see inspect_upload) from
    which the thumbnail, a query photo's preview and its network input are all made.
    """

    format: str
    width: int
    height: int
    picture: PIL.Image.Image


@dataclass(frozen=True)
class IngestResult:
    image: Image
    created: bool


def clean_original_name(name: str) -> str:
    """Keep only a displayable base name: no directories, no control characters, bounded length."""
    base = os.path.basename(str(name).replace("\\", "/"))
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:255] or "unnamed"


def _human_size(size: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def check_size(size: int) -> None:
    """Refuse a file by its size alone, before it is read into memory."""
    limit = settings.IMAGESEARCH_MAX_UPLOAD_BYTES
    if size > limit:
        raise RejectedUpload(f"The file is {_human_size(size)}, larger than the {_human_size(limit)} limit.", 413)
    if size == 0:
        raise RejectedUpload("The file is empty.")


def inspect_upload(data: bytes, min_size: int | None = None) -> Inspection:
    """Check size, format and integrity from the bytes alone; raise RejectedUpload with the reason.

    The integrity check is a decode, kept as ``Inspection.picture``: at least ``min_size``
    (default IMAGESEARCH_THUMBNAIL_SIZE) pixels a side, large photos decoded reduced
    (captioning.images.open_upright_rgb), so no caller needs to decode the upload again.
    """
    check_size(len(data))
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if fmt not in ALLOWED_FORMATS:
                raise RejectedUpload(
                    f"{fmt or 'This'} files are not accepted; upload a JPEG, PNG, WebP or GIF image.", 415
                )
            pixels = width * height
            if pixels > settings.IMAGESEARCH_MAX_PIXELS:
                raise RejectedUpload(
                    f"The image is {width}x{height} pixels ({pixels / 1e6:.0f} megapixels); "
                    f"the limit is {settings.IMAGESEARCH_MAX_PIXELS / 1e6:.0f} megapixels.",
                    413,
                )
            img.verify()
        # verify() does not decode pixel data; a decode catches truncated files. A large JPEG or
        # PNG decodes reduced (its whole data, a fraction of the memory).
        picture = open_upright_rgb(data, min_size=min_size or settings.IMAGESEARCH_THUMBNAIL_SIZE)
        # An EXIF orientation of 5 to 8 turns the picture by 90 degrees: width and height swap.
        if exif_orientation(data) in (5, 6, 7, 8):
            width, height = height, width
    except RejectedUpload:
        raise
    except PIL.Image.DecompressionBombError:
        raise RejectedUpload("The image has too many pixels to be processed safely.", 413) from None
    except PIL.UnidentifiedImageError:
        raise RejectedUpload("The file is not an image (accepted: JPEG, PNG, WebP, GIF).", 415) from None
    except (OSError, SyntaxError, ValueError) as exc:  # captioning.images.InvalidImageError too
        raise RejectedUpload(f"The image is damaged or truncated and cannot be read ({exc}).") from None
    return Inspection(format=fmt, width=width, height=height, picture=picture)


def make_thumbnail(picture: PIL.Image.Image) -> bytes:
    """A JPEG about IMAGESEARCH_THUMBNAIL_SIZE pixels on its longer side, from an upload's
    decoded picture (Inspection.picture), which is left as it was."""
    size = settings.IMAGESEARCH_THUMBNAIL_SIZE
    img = picture.copy()
    img.thumbnail((size, size), PIL.Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def _write_once(name: str, data: bytes) -> None:
    """Write content-addressed bytes atomically; concurrent writers of the same content are harmless."""
    path = Path(default_storage.path(name))
    if path.exists():
        return
    write_atomic(path, lambda handle: handle.write(data))


def ingest_bytes(data: bytes, original_name: str, uploader=None, *, enqueue: bool = True) -> IngestResult:
    """Store a photo and enqueue its captioning; the same bytes twice give the same image.

    ``enqueue=False`` leaves a new image pending for the caller to enqueue together with others
    (a bulk import: one model call per batch of photos instead of one per photo).
    """
    sha256 = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(sha256=sha256).first()
    if existing is not None:
        return IngestResult(existing, created=False)
    info = inspect_upload(data)
    file_name = content_path("images", sha256, ALLOWED_FORMATS[info.format])
    thumb_name = content_path("thumbs", sha256, "jpg")
    _write_once(file_name, data)
    _write_once(thumb_name, make_thumbnail(info.picture))
    try:
        with transaction.atomic():
            image = Image.objects.create(
                file=file_name,
                thumbnail=thumb_name,
                original_name=clean_original_name(original_name),
                sha256=sha256,
                width=info.width,
                height=info.height,
                format=info.format,
                uploader=uploader if uploader is not None and uploader.is_authenticated else None,
            )
            if enqueue:
                transaction.on_commit(lambda: tasks.enqueue_captioning([image.pk]))
    except IntegrityError:
        # A concurrent upload of the same photo won the race: one image.
        return IngestResult(Image.objects.get(sha256=sha256), created=False)
    return IngestResult(image, created=True)


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one uploaded file: the image (new or already stored), or the reason it was refused."""

    name: str
    image: Image | None = None
    created: bool = False
    error: str = ""
    status: int = 201


def read_upload(uploaded) -> bytes:
    """The file's bytes, refusing before reading anything when it is larger than the upload limit."""
    check_size(uploaded.size)
    uploaded.seek(0)
    return uploaded.read()


def upload_file(uploaded, user) -> UploadOutcome:
    """Ingest one uploaded file (pages, API and admin alike); a rejection becomes this file's own
    error, never the request's.

    The same bytes as a photo the uploader may not see (a hidden one) answer 409 without the
    image: nothing of it (name, captions, file) reaches someone who could not browse to it.
    """
    name = clean_original_name(uploaded.name)
    try:
        result = ingest_bytes(read_upload(uploaded), uploaded.name, user)
    except RejectedUpload as exc:
        return UploadOutcome(name, error=str(exc), status=exc.status)
    if not result.created and not Image.objects.visible_to(user).filter(pk=result.image.pk).exists():
        return UploadOutcome(name, error="This photo is already in the gallery and is not shown; it cannot be added again.", status=409)
    return UploadOutcome(name, result.image, result.created, status=201 if result.created else 200)
