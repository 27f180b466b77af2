"""Django settings for imagesearch, read from the environment with safe defaults.

Every knob is an environment variable (documented in README.md). With nothing set the
application runs self-contained: SQLite under the data directory, Celery tasks in-process,
a secret key generated once and kept in the data directory. Production sets DATABASE_URL
(PostgreSQL), CELERY_BROKER_URL (Redis), SECRET_KEY and DEBUG=false.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DATA_DIR = Path(env.str("IMAGESEARCH_DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)
DEBUG = env.bool("DEBUG", default=False)


def _local_secret_key(data_dir: Path) -> str:
    """Generate a secret key once and keep it in the data directory, for local use only."""
    key_file = data_dir / "secret_key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise environ.ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (production). For a local run use `make run`, "
            "or set DEBUG=true to generate one in the data directory."
        )
    SECRET_KEY = _local_secret_key(DATA_DIR)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "captioning",
    "searchindex",
    "gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "imagesearch.urls"
WSGI_APPLICATION = "imagesearch.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL in production and tests (DATABASE_URL); an embedded SQLite file otherwise.
DATABASES = {
    "default": dj_database_url.parse(
        env.str("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'imagesearch.sqlite3'}"),
        conn_max_age=env.int("DATABASE_CONN_MAX_AGE", default=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads of the development server and the in-process tasks share the file.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "static")))
MEDIA_URL = env.str("MEDIA_URL", default="/media/")
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(DATA_DIR / "media")))
# Serve uploaded photos from Django itself unless a front web server serves MEDIA_ROOT.
IMAGESEARCH_SERVE_MEDIA = env.bool("IMAGESEARCH_SERVE_MEDIA", default=True)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve app static files without requiring `collectstatic` on a small self-hosted install.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery:index"
LOGOUT_REDIRECT_URL = "gallery:index"

SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Uploads: the request body limit leaves room for many files in one multi-file upload.
IMAGESEARCH_MAX_UPLOAD_BYTES = env.int("IMAGESEARCH_MAX_UPLOAD_BYTES", default=20 * 1024 * 1024)
IMAGESEARCH_MAX_PIXELS = env.int("IMAGESEARCH_MAX_PIXELS", default=50_000_000)
IMAGESEARCH_MAX_FILES_PER_UPLOAD = env.int("IMAGESEARCH_MAX_FILES_PER_UPLOAD", default=100)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = IMAGESEARCH_MAX_FILES_PER_UPLOAD
IMAGESEARCH_THUMBNAIL_SIZE = env.int("IMAGESEARCH_THUMBNAIL_SIZE", default=320)
IMAGESEARCH_PUBLIC = env.bool("IMAGESEARCH_PUBLIC", default=True)
IMAGESEARCH_PAGE_SIZE = env.int("IMAGESEARCH_PAGE_SIZE", default=24)

# Captioning model: the bundled model directory unless another is installed.
IMAGESEARCH_MODEL_DIR = Path(env.str("IMAGESEARCH_MODEL_DIR", default=str(BASE_DIR / "captioning" / "models" / "current")))
# Converted InceptionV3 weights (88 MB, made by `manage.py prepare_models`, never committed).
IMAGESEARCH_FEATURE_DIR = Path(env.str("IMAGESEARCH_FEATURE_DIR", default=str(DATA_DIR / "models")))
# Caption search; unset = the settings tuned for the installed model (its meta.json), else 3 / 1.0.
IMAGESEARCH_BEAM_WIDTH = env.int("IMAGESEARCH_BEAM_WIDTH", default=None)
IMAGESEARCH_LENGTH_ALPHA = env.float("IMAGESEARCH_LENGTH_ALPHA", default=None)
IMAGESEARCH_CAPTION_BATCH = env.int("IMAGESEARCH_CAPTION_BATCH", default=16)
# Where InceptionV3 runs: auto = ONNX Runtime when installed and its graph is sound (faster), else
# TensorFlow; onnx = ONNX Runtime or fail; tensorflow = the reference path. Logged at start.
IMAGESEARCH_IMAGE_RUNTIME = env.str("IMAGESEARCH_IMAGE_RUNTIME", default="auto")
# ONNX Runtime threads per process (0 = one per core).
IMAGESEARCH_IMAGE_THREADS = env.int("IMAGESEARCH_IMAGE_THREADS", default=0)
# How long the web process waits for a worker to caption a search-by-image query photo.
IMAGESEARCH_QUERY_CAPTION_TIMEOUT = env.float("IMAGESEARCH_QUERY_CAPTION_TIMEOUT", default=30.0)

# Celery: Redis in production; with no broker configured tasks run in-process (eager).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=CELERY_BROKER_URL)
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# One worker process per machine by default: it uses every core (ONNX Runtime and TensorFlow thread
# pools) on whole batches; two on 2 cores were as fast within noise with twice the memory
# (docs/benchmarks.md, "Pipeline").
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=1)
# Each pool process loads TensorFlow and the model after the fork, which takes longer than the
# default 4 s that the parent waits for a new child.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 180
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Fail fast when the broker is down: the upload is kept and the recovery sweep enqueues it later.
CELERY_BROKER_TRANSPORT_OPTIONS = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
IMAGESEARCH_PENDING_SWEEP_MINUTES = env.int("IMAGESEARCH_PENDING_SWEEP_MINUTES", default=10)
# `celery -A imagesearch beat` runs the recovery sweep: stuck images are queued again.
CELERY_BEAT_SCHEDULE = {
    "caption-pending": {
        "task": "gallery.tasks.caption_pending",
        "schedule": 60.0 * max(1, IMAGESEARCH_PENDING_SWEEP_MINUTES // 2),
        "args": (IMAGESEARCH_PENDING_SWEEP_MINUTES,),
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
