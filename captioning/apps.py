from django.apps import AppConfig


class CaptioningConfig(AppConfig):
    """The neural captioner; its TensorFlow code is plain Python, this app only adds commands."""

    name = "captioning"
    default_auto_field = "django.db.models.BigAutoField"
