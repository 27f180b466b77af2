"""Settings for the test suite: the production settings against the real local PostgreSQL and Redis.

Each value can still be overridden from the environment (CI on another machine, say).
"""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "test-suite-only-not-secret")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/imagesearch")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="imagesearch-test-"))
# What `manage.py setup_local` makes for a local run: WhiteNoise wants STATIC_ROOT to exist.
(Path(os.environ["IMAGESEARCH_DATA_DIR"]) / "static").mkdir(parents=True, exist_ok=True)
# The converted InceptionV3 weights are shared with `make run` (converted once by prepare_models).
os.environ.setdefault("IMAGESEARCH_FEATURE_DIR", str(Path(__file__).resolve().parent.parent / "var" / "models"))

from imagesearch.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
