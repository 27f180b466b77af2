"""Forms of the web pages, and the one way an uploaded file reaches ingest (pages and API alike)."""
from dataclasses import dataclass

from django import forms

from .ingest import RejectedUpload, check_size, clean_original_name, ingest_bytes
from .models import Image

ACCEPT = "image/jpeg,image/png,image/webp,image/gif"


class SearchForm(forms.Form):
    q = forms.CharField(label="Search", required=False, strip=True)
    page = forms.IntegerField(min_value=1, required=False)


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files, returned as a list; each is judged later on its own (see upload_file)."""

    def __init__(self, **kwargs):
        super().__init__(widget=MultipleFileInput(attrs={"accept": ACCEPT}), **kwargs)

    def clean(self, data, initial=None):
        files = [uploaded for uploaded in data or [] if uploaded]
        if not files:
            raise forms.ValidationError("Choose at least one photo.")
        return files


class UploadForm(forms.Form):
    files = MultipleFileField(label="Photos", help_text="JPEG, PNG, WebP or GIF; several at once.")


class QueryPhotoForm(forms.Form):
    file = forms.FileField(
        label="Photo to search with",
        widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}),
        help_text="It is described by the captioning model, not stored.",
    )


@dataclass(frozen=True)
class UploadOutcome:
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
    """Ingest one uploaded file; a rejection becomes this file's own error, never the request's."""
    name = clean_original_name(uploaded.name)
    try:
        result = ingest_bytes(read_upload(uploaded), uploaded.name, user)
    except RejectedUpload as exc:
        return UploadOutcome(name, error=str(exc), status=exc.status)
    return UploadOutcome(name, result.image, result.created, status=201 if result.created else 200)
