"""Curation in Django admin: fix captions, re-caption, hide, unhide, delete, remove wrong tags."""
from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django.utils.html import format_html

from . import curation
from .captions import remove_tag, set_human_caption, sync_index
from .forms import ACCEPT
from .ingest import RejectedUpload, inspect_upload, read_upload, upload_file
from .models import CONFIDENT_FROM, Caption, Image, Tag


class CaptionInline(admin.TabularInline):
    """Caption history, read-only: edits go through the 'caption' field so the rules apply."""

    model = Caption
    extra = 0
    can_delete = False
    fields = ["text", "source", "model_version", "confidence", "score", "is_active", "created_at", "created_by"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class ImageAdminForm(forms.ModelForm):
    caption = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Editing this saves a human caption, which becomes active and searchable at once.",
    )

    class Meta:
        model = Image
        fields = ["hidden"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        active = self.instance.active_caption if self.instance.pk else None
        self.fields["caption"].initial = active.text if active else ""


class ImageAddForm(forms.ModelForm):
    """Adding a photo in admin is an upload: a file is required and goes through ingest
    (validated by content, deduplicated, thumbnailed, captioned), never a bare record."""

    file = forms.FileField(label="Photo", widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}),
                           help_text="JPEG, PNG, WebP or GIF; the same photo twice is kept once.")

    class Meta:
        model = Image
        fields = ["hidden"]

    def clean_file(self):
        uploaded = self.cleaned_data["file"]
        try:
            inspect_upload(read_upload(uploaded))
        except RejectedUpload as exc:
            raise forms.ValidationError(str(exc)) from None
        return uploaded


def active_model_confidence() -> Subquery:
    """Per photo, the confidence of its active caption when that is the model's (else NULL)."""
    active = Caption.objects.filter(image=OuterRef("pk"), is_active=True, source=Caption.Source.MODEL)
    return Subquery(active.values("confidence")[:1])


class NeedsReviewFilter(admin.SimpleListFilter):
    """Photos whose active caption is the model's and the model is unsure of it."""

    title = "review"
    parameter_name = "review"

    def lookups(self, request, model_admin):
        return [("needed", "Needs review (unsure model caption)")]

    def queryset(self, request, queryset):
        if self.value() != "needed":
            return queryset
        return queryset.annotate(review_confidence=active_model_confidence()).filter(review_confidence__lt=CONFIDENT_FROM)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    form = ImageAdminForm
    add_fieldsets = [(None, {"fields": ["file", "hidden"]})]
    list_display = ["thumbnail_tag", "original_name", "caption_text", "caption_confidence", "status", "hidden", "uploaded_on"]
    list_display_links = ["thumbnail_tag", "original_name"]
    list_filter = [NeedsReviewFilter, "status", "hidden", "captions__source", "format"]
    search_fields = ["original_name", "sha256", "captions__text"]
    readonly_fields = [
        "preview",
        "original_name",
        "sha256",
        "width",
        "height",
        "format",
        "uploader",
        "uploaded_at",
        "status",
        "error",
    ]
    fieldsets = [
        (None, {"fields": ["preview", "caption", "hidden"]}),
        ("Details", {"fields": readonly_fields[1:]}),
    ]
    inlines = [CaptionInline]
    actions = ["recaption", "hide", "unhide", "delete_with_files"]
    list_per_page = 50

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("captions").distinct()

    def get_ordering(self, request):
        """Needs review: least confident first (the filter annotates the active caption's confidence)."""
        if request.GET.get(NeedsReviewFilter.parameter_name) == "needed":
            return [active_model_confidence().asc(), "-uploaded_at"]
        return super().get_ordering(request)

    def get_actions(self, request):
        actions = super().get_actions(request)
        # The default bulk delete bypasses the index and the files; ours does both.
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="Photo")
    def thumbnail_tag(self, obj):
        if not obj.thumbnail:
            return "-"
        return format_html('<img src="{}" alt="" style="height:64px;border-radius:4px">', obj.thumbnail.url)

    @admin.display(description="Photo")
    def preview(self, obj):
        if not obj.thumbnail:
            return "-"
        return format_html('<img src="{}" alt="{}" style="max-height:320px">', obj.thumbnail.url, obj.original_name)

    @admin.display(description="Active caption")
    def caption_text(self, obj):
        caption = obj.active_caption
        return f"{caption.text} ({caption.source})" if caption else "-"

    @admin.display(description="Uploaded")
    def uploaded_on(self, obj):
        """The day only, newest first by the list's ordering (the full time is on the edit page): the list must fit 1280 px beside the filters."""
        return obj.uploaded_at.date().isoformat()

    @admin.display(description="Confidence", ordering=active_model_confidence())
    def caption_confidence(self, obj):
        caption = obj.active_caption
        if caption is None or caption.confidence is None:
            return "-"
        return f"{caption.confidence_label} ({caption.confidence:.2f})"

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ImageAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []  # a photo being added has no caption history

    def save_form(self, request, form, change):
        """On add, the image is the upload's (new, or the one already stored with these bytes)."""
        if change:
            return super().save_form(request, form, change)
        outcome = upload_file(form.cleaned_data["file"], request.user)
        if outcome.error:  # checked in clean_file; only a failing disk gets here
            raise RejectedUpload(outcome.error, outcome.status)
        if not outcome.created:
            self.message_user(request, "This photo was already in the gallery.", messages.WARNING)
        return outcome.image

    def save_related(self, request, form, formsets, change):
        if change:  # an added photo has no related rows of the form to save
            super().save_related(request, form, formsets, change)

    def save_model(self, request, obj, form, change):
        if not change:  # stored by save_form; only the flag remains
            if form.cleaned_data["hidden"] and not obj.hidden:
                curation.set_hidden([obj], True)
            return
        super().save_model(request, obj, form, change)
        if "hidden" in form.changed_data:
            sync_index(obj)  # the flag is saved above; only the index follows
        if "caption" in form.changed_data and form.cleaned_data["caption"].strip():
            set_human_caption(obj, form.cleaned_data["caption"], user=request.user)

    def delete_model(self, request, obj):
        curation.delete_images([obj])

    def delete_queryset(self, request, queryset):
        curation.delete_images(queryset)

    @admin.action(description="Re-caption with the installed model")
    def recaption(self, request, queryset):
        count = curation.recaption(queryset)
        self.message_user(request, f"{count} image(s) queued for captioning.", messages.SUCCESS)

    @admin.action(description="Hide from the gallery and search")
    def hide(self, request, queryset):
        self.message_user(request, f"{curation.set_hidden(queryset, True)} image(s) hidden.", messages.SUCCESS)

    @admin.action(description="Show in the gallery and search")
    def unhide(self, request, queryset):
        self.message_user(request, f"{curation.set_hidden(queryset, False)} image(s) shown.", messages.SUCCESS)

    @admin.action(description="Delete (files and index entries too)", permissions=["delete"])
    def delete_with_files(self, request, queryset):
        self.message_user(request, f"{curation.delete_images(queryset)} image(s) deleted.", messages.SUCCESS)


@admin.register(Caption)
class CaptionAdmin(admin.ModelAdmin):
    list_display = ["text", "image", "source", "model_version", "confidence", "score", "is_active", "created_at"]
    list_filter = ["source", "is_active", "model_version"]
    search_fields = ["text", "image__original_name"]
    readonly_fields = ["image", "text", "source", "model_version", "confidence", "score", "is_active", "created_at", "created_by"]
    exclude = ["attention"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    """Tags are the model's; a curator only removes wrong ones (re-indexed at once, kept removed)."""

    list_display = ["word", "image", "kind", "probability", "model_version", "removed"]
    list_filter = ["kind", "removed", "model_version"]
    search_fields = ["word", "image__original_name"]
    actions = ["remove_tags"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Remove the selected tags (no longer shown or searchable)", permissions=["view"])
    def remove_tags(self, request, queryset):
        tags = list(queryset.filter(removed=False))
        for tag in tags:
            remove_tag(tag)
        self.message_user(request, f"{len(tags)} tag(s) removed.", messages.SUCCESS)
