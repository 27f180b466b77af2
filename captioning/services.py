"""Django glue for the captioner: one lazily loaded model per process, configured by settings.

Nothing here imports TensorFlow at import time. The model is built on first use, which in a
Celery prefork worker happens inside the child process (a model built before the fork hangs
the children).
"""

import functools
import logging
import threading

from django.conf import settings

from .files import ModelFileError
from .inception import preprocess_image
from .storage import read_meta

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_captioner = None


def get_captioner():
    """The process-wide captioner, loaded once on first use."""
    global _captioner
    if _captioner is None:
        with _lock:
            if _captioner is None:
                from .inference import ImageCaptioner as Captioner

                _captioner = Captioner.from_dirs(
                    settings.IMAGESEARCH_MODEL_DIR,
                    settings.IMAGESEARCH_FEATURE_DIR,
                    beam_width=settings.IMAGESEARCH_BEAM_WIDTH,
                    length_alpha=settings.IMAGESEARCH_LENGTH_ALPHA,
                    batch_size=settings.IMAGESEARCH_CAPTION_BATCH,
                    image_runtime=settings.IMAGESEARCH_IMAGE_RUNTIME,
                    image_threads=settings.IMAGESEARCH_IMAGE_THREADS,
                )
    return _captioner


@functools.lru_cache(maxsize=1)
def model_meta() -> dict:
    """meta.json of the installed model (read once per process, without loading TensorFlow).

    An unreadable model directory gives {} (logged): the web pages keep working on defaults,
    and captioning reports the problem itself when it loads the model.
    """
    try:
        return read_meta(settings.IMAGESEARCH_MODEL_DIR)
    except ModelFileError:
        logger.exception("The model's meta.json cannot be read")
        return {}


def load_image(data: bytes):
    """Decode and preprocess image bytes for the captioner; raises ValueError for non-images."""
    return preprocess_image(data)
