"""Settings for the test suite: the production settings against the real local PostgreSQL and Redis.

Each value can still be overridden from the environment (CI on another machine, say).
"""
import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-suite-only-not-secret")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/imagesearch")
os.environ.setdefault("IMAGESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="imagesearch-test-"))

from imagesearch.settings import *  # noqa: E402,F401,F403

# The suite decides per test whether tasks go to a real worker (see tests/conftest.py).
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
