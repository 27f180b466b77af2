"""Forms of the web pages; each uploaded file goes on to ingest.upload_file."""
from django import forms

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

