"""Django settings for imagesearch, read from the environment with safe defaults.

Every knob is an environment variable (documented in README.md). With nothing set the
application runs self-contained: SQLite under the data directory, Celery tasks in-process,
the secret key that `manage.py setup_local` (run by `make run`) keeps in the data directory.
Production sets DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), SECRET_KEY and DEBUG=false.
Importing the settings writes nothing to disk.
"""

import secrets
from datetime import timedelta
from pathlib import Path

import environ

from captioning.runtime import DEFAULT_MMAP_THRESHOLD, PRECISIONS, RUNTIMES

from .local import read_secret_key_file

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DATA_DIR = Path(env.str("IMAGESEARCH_DATA_DIR", default=str(BASE_DIR / "var")))
DEBUG = env.bool("DEBUG", default=False)

# The environment's key (production), else the one the local set-up keeps in the data directory.
SECRET_KEY = env.str("SECRET_KEY", default="") or read_secret_key_file(DATA_DIR)
if not SECRET_KEY:
    if not DEBUG:
        raise environ.ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (production). For a local run use `make run`, "
            "whose first step `manage.py setup_local` keeps a key in the data directory."
        )
    # Debugging before the set-up step: a key for this process only (sessions end with it).
    SECRET_KEY = secrets.token_urlsafe(50)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
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
    "csp.middleware.CSPMiddleware",
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
                "gallery.context_processors.captioning_status",
            ],
        },
    },
]

# PostgreSQL in production and tests (DATABASE_URL); an embedded SQLite file otherwise.
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'imagesearch.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The development server's threads and the in-process tasks share the file: readers do not
    # block the writer (WAL), a writer waits up to 30 s for another (busy timeout), and write
    # transactions take the lock when they begin (no deadlock upgrading a read lock).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    }

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
# Serve app static files without requiring `collectstatic` on a small self-hosted install.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery:index"
LOGOUT_REDIRECT_URL = "gallery:index"

# Served over HTTPS (usually behind a TLS proxy): secure cookies, HSTS, redirect to https.
IMAGESEARCH_HTTPS = env.bool("IMAGESEARCH_HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = IMAGESEARCH_HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if IMAGESEARCH_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=IMAGESEARCH_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=IMAGESEARCH_HTTPS)
# The header a TLS proxy sets, e.g. "X-Forwarded-Proto: https" (only when the proxy always sets it).
_proxy_ssl_header = env.str("IMAGESEARCH_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.split(":")[0].strip().upper().replace("-", "_"), _proxy_ssl_header.split(":")[1].strip())
    if ":" in _proxy_ssl_header
    else None
)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Scripts, styles and images from this site only; the attention canvas draws same-site thumbnails.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],  # Django admin's and our admin thumbnails' style="..."
        "img-src": ["'self'", "data:", "blob:"],  # data: the query photo; blob: upload previews
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

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
# Search-index snapshot files, memory-mapped by every process of this machine (docs/search.md).
IMAGESEARCH_INDEX_DIR = Path(env.str("IMAGESEARCH_INDEX_DIR", default=str(DATA_DIR / "index")))
# Caption search; unset = the settings tuned for the installed model (its meta.json), else 3 / 1.0.
IMAGESEARCH_BEAM_WIDTH = env.int("IMAGESEARCH_BEAM_WIDTH", default=None)
IMAGESEARCH_LENGTH_ALPHA = env.float("IMAGESEARCH_LENGTH_ALPHA", default=None)
IMAGESEARCH_CAPTION_BATCH = env.int("IMAGESEARCH_CAPTION_BATCH", default=16)
# Photos per captioning task of bulk work (import_images, recaption, the pending sweep): several
# model batches, so that the model describes one batch while the worker stores the batch before and
# decodes the batch after (gallery.tasks.caption_images). An upload is a task of its own.
IMAGESEARCH_CAPTION_TASK_SIZE = env.int("IMAGESEARCH_CAPTION_TASK_SIZE", default=64)
# Object labels from the EfficientNet-Lite0 ImageNet classifier (converted by prepare_models).
IMAGESEARCH_OBJECT_LABELS = env.bool("IMAGESEARCH_OBJECT_LABELS", default=True)
# Where the image networks (InceptionV3, EfficientNet-Lite0) run: auto = ONNX Runtime when installed
# and each exported graph is sound (faster), else TensorFlow; onnx = ONNX Runtime or fail;
# tensorflow = the reference path. Each network's choice is logged when the model loads.
IMAGESEARCH_IMAGE_RUNTIME = env.str("IMAGESEARCH_IMAGE_RUNTIME", default="auto").strip().lower()
if IMAGESEARCH_IMAGE_RUNTIME not in RUNTIMES:
    raise environ.ImproperlyConfigured(
        f"IMAGESEARCH_IMAGE_RUNTIME={IMAGESEARCH_IMAGE_RUNTIME!r} is not one of {', '.join(RUNTIMES)}"
    )
# The precision of InceptionV3 on ONNX Runtime: int8 = the quantised graph that prepare_models builds
# (2x faster, 1.06 GB per worker, but dev CIDEr-D 2.2 % lower with flickr8k-v6: not the default; falls back to fp32
# when it is missing or damaged), fp32 = the exported float graph. EfficientNet-Lite0 and TensorFlow
# always run fp32. docs/benchmarks.md, "InceptionV3 in int8".
IMAGESEARCH_IMAGE_PRECISION = env.str("IMAGESEARCH_IMAGE_PRECISION", default="fp32").strip().lower()
if IMAGESEARCH_IMAGE_PRECISION not in PRECISIONS:
    raise environ.ImproperlyConfigured(
        f"IMAGESEARCH_IMAGE_PRECISION={IMAGESEARCH_IMAGE_PRECISION!r} is not one of {', '.join(PRECISIONS)}"
    )
# ONNX Runtime threads per process (0 = one per core).
IMAGESEARCH_IMAGE_THREADS = env.int("IMAGESEARCH_IMAGE_THREADS", default=0)
# Keep ONNX Runtime's activation memory between calls (its arena): off saves 110-300 MB per
# captioning process for about 8 % more CPU (docs/benchmarks.md, "memory of a captioning process").
IMAGESEARCH_IMAGE_MEMORY_ARENA = env.bool("IMAGESEARCH_IMAGE_MEMORY_ARENA", default=True)
# Allocations of this many bytes or more get their own mapping, freed back to the system at once
# (glibc; 0 = glibc's own adaptive threshold): a captioning process's activations do not pile up.
IMAGESEARCH_MALLOC_MMAP_THRESHOLD = env.int("IMAGESEARCH_MALLOC_MMAP_THRESHOLD", default=DEFAULT_MMAP_THRESHOLD)
# How long the web process waits for a worker to caption a search-by-image query photo.
IMAGESEARCH_QUERY_CAPTION_TIMEOUT = env.float("IMAGESEARCH_QUERY_CAPTION_TIMEOUT", default=30.0)

# Uploaded files go through an access check (gallery.media); the front server may send the bytes:
# "x-accel-redirect" (nginx, Caddy) to IMAGESEARCH_MEDIA_ACCEL_PREFIX, or "x-sendfile".
IMAGESEARCH_MEDIA_ACCEL = env.str("IMAGESEARCH_MEDIA_ACCEL", default="")
IMAGESEARCH_MEDIA_ACCEL_PREFIX = env.str("IMAGESEARCH_MEDIA_ACCEL_PREFIX", default="/protected-media/")
# Captionings at once in the web process when tasks run in-process (no broker): bounds memory.
IMAGESEARCH_EMBEDDED_CAPTIONING = env.int("IMAGESEARCH_EMBEDDED_CAPTIONING", default=1)

# Rate limits per client (user, else address), scope=N/period; over the limit: 429 + Retry-After.
IMAGESEARCH_RATE_LIMITS = {
    "search": "120/min",
    "search_by_image": "10/min",
    "upload": "120/min",
    "login": "5/min",
    **env.dict("IMAGESEARCH_RATE_LIMITS", default={}),
}
# The counters (and nothing else) live in the cache: set CACHE_URL=redis://... when several processes serve.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["knox.auth.TokenAuthentication", "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "gallery.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Proxies in front whose X-Forwarded-For is trusted for the client address of rate limits.
    "NUM_PROXIES": env.int("IMAGESEARCH_PROXY_COUNT", default=0),
}
# API tokens: stored hashed (SHA-512), shown once, sent as "Authorization: Bearer <token>";
# they last IMAGESEARCH_API_TOKEN_DAYS days (0: until revoked).
_token_days = env.int("IMAGESEARCH_API_TOKEN_DAYS", default=0)
REST_KNOX = {"AUTH_HEADER_PREFIX": "Bearer", "TOKEN_PREFIX": "imgs_", "TOKEN_TTL": timedelta(days=_token_days) if _token_days else None}
SPECTACULAR_SETTINGS = {
    "TITLE": "imagesearch API",
    "DESCRIPTION": "Search photos by words or by a photo, list, show and upload them (docs/api.md).",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api",
}

# Celery: Redis in production; with no broker configured tasks run in-process (eager).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=CELERY_BROKER_URL)
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
if CELERY_TASK_ALWAYS_EAGER:
    # Celery still opens a producer for an eager task: an in-memory one, not a guess at AMQP on localhost.
    CELERY_BROKER_WRITE_URL = "memory://localhost/"
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

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # "django" only propagates to the root's handler (Django's own console handler doubled each line).
    "loggers": {
        "django": {"level": LOG_LEVEL},
        "django.db.backends": {"level": "WARNING"},
        # "Task ... succeeded" for each in-process task is a worker's log line, not the web console's.
        "celery.app.trace": {"level": "WARNING" if CELERY_TASK_ALWAYS_EAGER else LOG_LEVEL},
    },
}
