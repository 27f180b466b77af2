"""The Celery application.

Workers are started with `celery -A imagesearch worker`. Nothing here imports TensorFlow:
the captioning model is loaded lazily inside each worker process after the prefork fork
(a model built before the fork hangs the children).
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")

app = Celery("imagesearch")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
