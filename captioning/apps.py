from django.apps import AppConfig
from django.conf import settings

from .native_log import silence_tensorflow_notices


class CaptioningConfig(AppConfig):
    """The neural captioner; its TensorFlow code is plain Python, this app only adds commands."""

    name = "captioning"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Before anything imports TensorFlow (it is imported lazily, when a model is loaded).
        silence_tensorflow_notices(settings.LOG_LEVEL)
