from django.apps import AppConfig


class GalleryConfig(AppConfig):
    """Photos, their captions, and the pages and API around them."""

    name = "gallery"
    default_auto_field = "django.db.models.BigAutoField"
