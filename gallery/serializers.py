"""How the API shows images, captions, tags and search results; the OpenAPI schema is generated from these."""
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .captions import search_weights
from .models import Caption, Image, Tag


class ErrorSerializer(serializers.Serializer):
    """Every API error: {"error": "..."} with a fitting status."""

    error = serializers.CharField()


class AlternativeSerializer(serializers.Serializer):
    """Another caption of the model's beam search."""

    text = serializers.CharField()
    score = serializers.FloatField()

    def to_representation(self, instance):
        text, score = instance
        return {"text": text, "score": score}


LOG_PROB_HELP = "The model's length-normalised log-probability of the caption: a raw score, not comparable across models."
CONFIDENCE_HELP = "Calibrated probability (0 to 1) that the model's caption is good; null for a person's caption or an uncalibrated model."
CONFIDENCE_LABEL_HELP = 'The confidence in words: "confident" (at least 0.5), "unsure", or "" when there is none.'


class CaptionSerializer(serializers.ModelSerializer):
    active = serializers.BooleanField(source="is_active")
    alternatives = AlternativeSerializer(many=True, help_text="The model's other captions, best first.")
    score = serializers.FloatField(allow_null=True, help_text="The same value as log_prob, kept for existing clients.")
    log_prob = serializers.FloatField(source="score", allow_null=True, help_text=LOG_PROB_HELP)
    confidence = serializers.FloatField(allow_null=True, help_text=CONFIDENCE_HELP)
    confidence_label = serializers.CharField(help_text=CONFIDENCE_LABEL_HELP)

    class Meta:
        model = Caption
        fields = [
            "text", "source", "model_version", "score", "log_prob", "confidence", "confidence_label", "active",
            "created_at", "alternatives",
        ]


class TagSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tag
        fields = ["kind", "word", "probability"]


def _absolute(request, url: str | None) -> str | None:
    return request.build_absolute_uri(url) if url else None


class ImageSerializer(serializers.ModelSerializer):
    """An image in a list: its active caption and its tags (those confident enough to show)."""

    page_url = serializers.SerializerMethodField()
    api_url = serializers.SerializerMethodField()
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    caption = serializers.SerializerMethodField()
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id", "page_url", "api_url", "file_url", "thumbnail_url", "original_name", "width", "height",
            "format", "status", "error", "uploaded_at", "caption", "tags",
        ]

    @extend_schema_field(OpenApiTypes.URI)
    def get_page_url(self, image) -> str:
        return self.context["request"].build_absolute_uri(reverse("gallery:image", args=[image.pk]))

    @extend_schema_field(OpenApiTypes.URI)
    def get_api_url(self, image) -> str:
        return self.context["request"].build_absolute_uri(reverse("gallery:api-image", args=[image.pk]))

    @extend_schema_field({"type": ["string", "null"], "format": "uri"})
    def get_file_url(self, image):
        return _absolute(self.context["request"], image.file.url if image.file else None)

    @extend_schema_field({"type": ["string", "null"], "format": "uri"})
    def get_thumbnail_url(self, image):
        return _absolute(self.context["request"], image.thumbnail.url if image.thumbnail else None)

    @extend_schema_field(CaptionSerializer(allow_null=True))
    def get_caption(self, image):
        active = image.active_caption
        return CaptionSerializer(active).data if active else None

    @extend_schema_field(TagSerializer(many=True))
    def get_tags(self, image):
        floor = search_weights().tag_min_probability
        shown = [tag for tag in image.tags.all() if not tag.removed and tag.probability >= floor]
        return TagSerializer(shown, many=True).data


class ImageDetailSerializer(ImageSerializer):
    """One image: every caption it had, and the attention maps of the active one."""

    captions = CaptionSerializer(many=True)
    attention = serializers.SerializerMethodField()

    class Meta(ImageSerializer.Meta):
        fields = ImageSerializer.Meta.fields + ["captions", "attention"]

    @extend_schema_field(
        {
            "type": ["array", "null"],
            "description": "Per word of the active caption: [word, [64 attention weights over the 8x8 grid]].",
            "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "array", "items": {"type": "number"}}]},
        }
    )
    def get_attention(self, image):
        active = image.active_caption
        return active.attention if active else None


class PageSerializer(serializers.Serializer):
    page = serializers.IntegerField()
    per_page = serializers.IntegerField()
    num_pages = serializers.IntegerField()
    total = serializers.IntegerField()


class ImagePageSerializer(PageSerializer):
    results = ImageSerializer(many=True)


class InterpretationSerializer(serializers.Serializer):
    """How the query was understood."""

    terms = serializers.ListField(child=serializers.CharField())
    phrases = serializers.ListField(child=serializers.CharField())
    excluded = serializers.ListField(child=serializers.CharField())
    ignored = serializers.ListField(child=serializers.CharField())
    unknown = serializers.ListField(child=serializers.CharField())


class HitSerializer(serializers.Serializer):
    score = serializers.FloatField()
    matched_terms = serializers.ListField(child=serializers.CharField())
    image = ImageSerializer()


class SearchResultsSerializer(PageSerializer):
    interpretation = InterpretationSerializer()
    message = serializers.CharField(allow_null=True)
    results = HitSerializer(many=True)


class WordSearchSerializer(SearchResultsSerializer):
    query = serializers.CharField()


class PhotoSearchSerializer(SearchResultsSerializer):
    caption = serializers.CharField(help_text="What the captioning model says of the query photo.")
    score = serializers.FloatField(help_text="The same value as log_prob, kept for existing clients.")
    log_prob = serializers.FloatField(source="score", help_text=LOG_PROB_HELP)
    confidence = serializers.FloatField(allow_null=True, help_text=CONFIDENCE_HELP)
    confidence_label = serializers.CharField(help_text=CONFIDENCE_LABEL_HELP)
    model_version = serializers.CharField()
    tags = serializers.ListField(
        child=serializers.CharField(), help_text="The query photo's concept words confident enough to show, most probable first."
    )
    objects = serializers.ListField(
        child=serializers.CharField(), help_text="The query photo's object labels confident enough to show, most probable first."
    )


class UploadSerializer(serializers.Serializer):
    created = serializers.BooleanField(help_text="False when the same photo was already in the gallery.")
    image = ImageDetailSerializer()


class PhotoFileSerializer(serializers.Serializer):
    """The request body of an upload or a search by photo."""

    file = serializers.FileField(help_text="Exactly one JPEG, PNG, WebP or GIF image.")
