"""WSGI entry point for gunicorn (`gunicorn imagesearch.wsgi`) and for `manage.py runserver`.

In the embedded default (no broker) this web process captions uploads itself: it starts loading
the captioning model as it starts, so that the first upload does not wait for the load.
"""
import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from captioning.services import preload_captioner_in_background

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
application = get_wsgi_application()

if not settings.CELERY_BROKER_URL:
    preload_captioner_in_background()
