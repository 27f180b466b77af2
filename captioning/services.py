"""Django glue for the captioner: one lazily loaded model per process, configured by settings.

Nothing here imports TensorFlow at import time. The model is built on first use, which in a
Celery prefork worker happens inside the child process (a model built before the fork hangs
the children).
"""

import functools
import logging
import threading
import time

from PIL import Image

from django.conf import settings

from .files import ModelFileError
from .inception import DECODE_SIZE, preprocess_image
from .inference import FEATURE_BATCH, ImageCaptioner
from .native_log import native_notices_dropped
from .runtime import map_large_allocations
from .storage import read_meta

logger = logging.getLogger(__name__)

# Pixels a side (at least) that a photo decoded once for several uses (thumbnail, query preview)
# must have to serve as the captioner's input too (load_image of a decoded image).
NETWORK_DECODE_SIZE = DECODE_SIZE

_lock = threading.Lock()
_captioner = None
_warming_up = threading.Event()


def get_captioner():
    """The process-wide captioner, loaded once on first use."""
    global _captioner
    if _captioner is None:
        with _lock:
            if _captioner is None:
                map_large_allocations(settings.IMAGESEARCH_MALLOC_MMAP_THRESHOLD)
                with native_notices_dropped(enabled=settings.LOG_LEVEL != "DEBUG"):
                    _captioner = ImageCaptioner.from_dirs(
                        settings.IMAGESEARCH_MODEL_DIR,
                        settings.IMAGESEARCH_FEATURE_DIR,
                        beam_width=settings.IMAGESEARCH_BEAM_WIDTH,
                        length_alpha=settings.IMAGESEARCH_LENGTH_ALPHA,
                        batch_size=settings.IMAGESEARCH_CAPTION_BATCH,
                        object_labels=settings.IMAGESEARCH_OBJECT_LABELS,
                        image_runtime=settings.IMAGESEARCH_IMAGE_RUNTIME,
                        image_precision=settings.IMAGESEARCH_IMAGE_PRECISION,
                        image_threads=settings.IMAGESEARCH_IMAGE_THREADS,
                        image_memory_arena=settings.IMAGESEARCH_IMAGE_MEMORY_ARENA,
                    )
    return _captioner


def warm_up_captioner(photos: int):
    """The process-wide captioner, loaded and run once on ``photos`` blank photos; returns it.

    TensorFlow traces its graphs on the first call (seconds) and ONNX Runtime plans its memory for
    each new batch size, which would otherwise delay the first upload's caption or a worker's first
    batch. Warm up with the batch size that will come (at most FEATURE_BATCH photos run at once).
    """
    captioner = get_captioner()
    blank = preprocess_image(Image.new("RGB", (299, 299), "gray"))
    captioner.describe_arrays([blank] * min(max(1, photos), FEATURE_BATCH))
    return captioner


def captioner_loading() -> bool:
    """Whether this process is loading the model right now (pages say that captions follow soon)."""
    return (_captioner is None and _lock.locked()) or _warming_up.is_set()


def _load_and_log():
    started = time.monotonic()
    _warming_up.set()
    try:
        captioner = warm_up_captioner(photos=1)
    except Exception:  # the first caption request retries the load and reports the error
        logger.exception("The captioning model could not be loaded")
        return
    finally:
        _warming_up.clear()
    logger.info("Captioning model %s ready (loaded in %.0f s).", captioner.version, time.monotonic() - started)


def preload_captioner_in_background() -> threading.Thread:
    """Start loading the model now, so the first upload is captioned in seconds, not after the load.

    For a web process that captions in-process (no broker); pages answer meanwhile.
    """
    logger.info("Loading the captioning model in the background; the first captions follow once it is ready.")
    thread = threading.Thread(target=_load_and_log, name="captioner-preload", daemon=True)
    thread.start()
    return thread


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


def load_image(source):
    """Decode and preprocess image bytes (or an image decoded at least NETWORK_DECODE_SIZE a side) for the
    captioner; raises ValueError for non-images."""
    return preprocess_image(source)
