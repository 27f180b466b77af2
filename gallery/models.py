"""Photos and their captions.

An image is stored under a content-addressed path (its SHA-256), never under the name it was
uploaded with; the same photo uploaded twice is one image. Captions accumulate over time (each
model version, each human edit); exactly one is active, and that one is what search indexes.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


def content_path(prefix: str, sha256: str, extension: str) -> str:
    """Storage path derived only from the file's hash, so uploaded names never reach the disk."""
    return f"{prefix}/{sha256[:2]}/{sha256}.{extension}"


class ImageQuerySet(models.QuerySet):
    def visible_to(self, user):
        """The images a person may see: hidden ones only for staff (curators)."""
        return self if user.is_staff else self.filter(hidden=False)


class Image(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a caption"
        PROCESSING = "processing", "Being captioned"
        DONE = "done", "Captioned"
        FAILED = "failed", "Captioning failed"

    file = models.ImageField(max_length=200)
    thumbnail = models.ImageField(max_length=200, blank=True)
    original_name = models.CharField(max_length=255, help_text="File name as uploaded; shown, never used as a path.")
    sha256 = models.CharField(max_length=64, unique=True)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    format = models.CharField(max_length=10)
    uploader = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    uploaded_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_changed_at = models.DateTimeField(auto_now_add=True, help_text="For the sweep that re-enqueues stuck work.")
    error = models.TextField(blank=True)
    hidden = models.BooleanField(default=False, db_index=True)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["-uploaded_at", "-id"]
        indexes = [models.Index(fields=["status", "status_changed_at"], name="gallery_image_sweep_idx")]

    def __str__(self):
        return f"{self.original_name} ({self.sha256[:12]})"

    @property
    def active_caption(self):
        """The caption search uses; None until the image is captioned."""
        # Uses the prefetch cache when a list view prefetched captions.
        for caption in self.captions.all():
            if caption.is_active:
                return caption
        return None


# A calibrated caption confidence at or above this: the caption is more likely good than not.
CONFIDENT_FROM = 0.5


def confidence_label(confidence: float | None) -> str:
    """How a caption's calibrated confidence is shown to people: "confident", "unsure", or ""
    when the model gave none (human captions, models before flickr8k-v5)."""
    if confidence is None:
        return ""
    return "confident" if confidence >= CONFIDENT_FROM else "unsure"


class Caption(models.Model):
    class Source(models.TextChoices):
        MODEL = "model", "Model"
        HUMAN = "human", "Human"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="captions")
    text = models.TextField()
    source = models.CharField(max_length=8, choices=Source.choices)
    model_version = models.CharField(max_length=64, blank=True)
    score = models.FloatField(null=True, blank=True, help_text="Length-normalised log-probability of the caption.")
    confidence = models.FloatField(
        null=True, blank=True, db_index=True,
        help_text="Calibrated probability that the model's caption is good (names nothing absent, close to what people write).",
    )
    attention = models.JSONField(
        null=True, blank=True, help_text="Per-word attention over the 8x8 feature grid: [[word, [64 weights]], ...]."
    )
    alternatives = models.JSONField(
        default=list, blank=True, help_text="The other distinct captions of the model's beam search: [[text, score], ...], best first."
    )
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["image"], condition=Q(is_active=True), name="one_active_caption_per_image"),
            # Captioning is idempotent: one model caption per image and model version.
            models.UniqueConstraint(
                fields=["image", "model_version"], condition=Q(source="model"), name="one_caption_per_model_version"
            ),
        ]

    def __str__(self):
        return self.text

    @property
    def confidence_label(self) -> str:
        return confidence_label(self.confidence)


class Tag(models.Model):
    """A word describing a photo, with the model's calibrated probability; searchable and shown.

    Tags of one kind come from one source: the captioner's concept words, or the object labels of
    the ImageNet classifier (captioning.objects), shown apart on the pages. A new model version replaces the image's model tags; a tag a curator
    removed stays removed (kept with ``removed=True``) so that re-captioning does not bring it back.
    """

    class Kind(models.TextChoices):
        CONCEPT = "concept", "Concept word"
        OBJECT = "object", "Object label"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="tags")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CONCEPT)
    word = models.CharField(max_length=64)
    probability = models.FloatField(
        help_text="Concept word: calibrated probability that people would use it for the photo; "
        "object label: the classifier's probability of the classes it names."
    )
    model_version = models.CharField(max_length=64)
    removed = models.BooleanField(default=False, help_text="Removed by a curator: not indexed, not shown.")

    class Meta:
        ordering = ["-probability", "word"]
        constraints = [models.UniqueConstraint(fields=["image", "kind", "word"], name="one_tag_per_word_and_kind")]

    def __str__(self):
        return f"{self.word} ({self.probability:.2f})"


class Fingerprint(models.Model):
    """A photo's visual fingerprint (captioning.fingerprints): finds re-saved copies of it.

    Computed by the captioning worker with the caption, from the same features; replaced with each
    new model version. Fingerprints of different projections are not comparable, so each records
    its projection's key and only fingerprints of the installed one take part in a search.
    """

    image = models.OneToOneField(Image, on_delete=models.CASCADE, primary_key=True, related_name="fingerprint")
    projection = models.CharField(max_length=64, db_index=True, help_text="SHA-256 of the projection file.")
    model_version = models.CharField(max_length=64)
    vector = models.BinaryField(help_text="Unit-length float16 vector, little-endian.")

    def __str__(self):
        return f"fingerprint of image {self.image_id} ({self.model_version})"
