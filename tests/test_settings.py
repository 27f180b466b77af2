"""Settings come from the environment with safe defaults."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = (
    "import json, django; from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'name': str(s.DATABASES['default']['NAME']), "
    "'host': s.DATABASES['default'].get('HOST'), 'eager': s.CELERY_TASK_ALWAYS_EAGER, "
    "'broker': s.CELERY_BROKER_URL, 'debug': s.DEBUG, 'hosts': s.ALLOWED_HOSTS, 'key': s.SECRET_KEY, "
    "'max_upload': s.IMAGESEARCH_MAX_UPLOAD_BYTES, 'model_dir': str(s.IMAGESEARCH_MODEL_DIR), "
    "'media': str(s.MEDIA_ROOT), 'public': s.IMAGESEARCH_PUBLIC}))"
)


def clean_env(data_dir, **env):
    """This process's environment without any of the settings' variables, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "IMAGESEARCH_"))}
    clean.pop("SECRET_KEY", None)
    clean.pop("DEBUG", None)
    clean.update({"DJANGO_SETTINGS_MODULE": "imagesearch.settings", "IMAGESEARCH_DATA_DIR": str(data_dir)})
    clean.update(env)
    return clean


def load_settings(tmp_path, **env):
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean_env(tmp_path, **env), capture_output=True, text=True)


def test_embedded_default_uses_sqlite_and_eager_tasks(tmp_path):
    proc = load_settings(tmp_path, DEBUG="true")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["engine"] == "django.db.backends.sqlite3"
    assert values["name"] == str(tmp_path / "imagesearch.sqlite3")
    assert values["eager"] is True and values["broker"] == ""
    assert values["media"] == str(tmp_path / "media")
    assert values["public"] is True


def set_up_local(tmp_path):
    env = clean_env(tmp_path, DEBUG="true")
    proc = subprocess.run([sys.executable, "manage.py", "setup_local"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_settings_write_nothing_at_import(tmp_path):
    data_dir = tmp_path / "data"
    proc = load_settings(data_dir, DEBUG="true")
    assert proc.returncode == 0, proc.stderr
    assert not data_dir.exists()


def test_local_secret_key_is_generated_once_and_kept(tmp_path):
    set_up_local(tmp_path)
    first = json.loads(load_settings(tmp_path, DEBUG="true").stdout)["key"]
    set_up_local(tmp_path)
    second = json.loads(load_settings(tmp_path, DEBUG="true").stdout)["key"]
    assert len(first) >= 50 and first == second
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "static").is_dir() and (tmp_path / "media").is_dir()


def test_local_set_up_needs_no_debug_afterwards(tmp_path):
    """`make run` wrote the key: documented commands work as typed, without DEBUG=true."""
    set_up_local(tmp_path)
    proc = load_settings(tmp_path)
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["debug"] is False and values["key"] == (tmp_path / "secret_key").read_text().strip()


def test_production_requires_secret_key(tmp_path):
    proc = load_settings(tmp_path, DEBUG="false")
    assert proc.returncode != 0
    assert "SECRET_KEY must be set" in proc.stderr


def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path):
    set_up_local(tmp_path)
    probe = (
        "import django; django.setup(); from django.db import connection; c = connection.cursor(); "
        "print(c.execute('PRAGMA journal_mode').fetchone()[0], c.execute('PRAGMA busy_timeout').fetchone()[0])"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["wal", "30000"]


def test_production_values_are_parsed(tmp_path):
    proc = load_settings(
        tmp_path,
        SECRET_KEY="s3cret",
        DATABASE_URL="postgres://photo:pw@db.internal:5433/photos",
        CELERY_BROKER_URL="redis://cache:6379/0",
        ALLOWED_HOSTS="photos.example.org,www.example.org",
        IMAGESEARCH_MAX_UPLOAD_BYTES="1048576",
        IMAGESEARCH_MODEL_DIR="/srv/models/v2",
        IMAGESEARCH_PUBLIC="false",
    )
    assert proc.returncode == 0, proc.stderr
    values = json.loads(proc.stdout)
    assert values["engine"] == "django.db.backends.postgresql"
    assert (values["name"], values["host"]) == ("photos", "db.internal")
    assert values["eager"] is False and values["broker"] == "redis://cache:6379/0"
    assert values["debug"] is False and values["key"] == "s3cret"
    assert values["hosts"] == ["photos.example.org", "www.example.org"]
    assert values["max_upload"] == 1048576
    assert values["model_dir"] == "/srv/models/v2"
    assert values["public"] is False


@pytest.mark.parametrize("value", ["not-a-number", "12MB"])
def test_bad_numbers_fail_clearly(tmp_path, value):
    proc = load_settings(tmp_path, DEBUG="true", IMAGESEARCH_MAX_UPLOAD_BYTES=value)
    assert proc.returncode != 0
    assert "invalid literal" in proc.stderr or "ValueError" in proc.stderr


# The README's production environment (section "Production"), on this machine's services.
PRODUCTION = {
    "SECRET_KEY": "a-long-random-production-key-" + "x" * 40,
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/imagesearch",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    "CACHE_URL": "redis://127.0.0.1:6379/1",
    "ALLOWED_HOSTS": "photos.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://photos.example.org",
    "IMAGESEARCH_HTTPS": "true",
    "IMAGESEARCH_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "IMAGESEARCH_PROXY_COUNT": "1",
    "IMAGESEARCH_MEDIA_ACCEL": "x-accel-redirect",
}


def test_the_production_environment_passes_the_deploy_checks(tmp_path):
    # DJANGO_ too: the browser tests allow async-unsafe calls in this process, never in production.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "IMAGESEARCH_", "DEBUG", "SECRET_KEY", "DJANGO_"))}
    clean.update(PRODUCTION, DJANGO_SETTINGS_MODULE="imagesearch.settings", IMAGESEARCH_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


def test_one_switch_turns_on_https(tmp_path):
    probe = (
        "import json, django; from django.conf import settings as s; print(json.dumps([s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESEARCH_", "DEBUG"))}
    env.update(DJANGO_SETTINGS_MODULE="imagesearch.settings", IMAGESEARCH_DATA_DIR=str(tmp_path), SECRET_KEY="k")

    def values(**extra):
        proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, **extra}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert values() == [False, False, False, 0, None]
    on = values(IMAGESEARCH_HTTPS="true", IMAGESEARCH_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert on == [True, True, True, 31536000, ["HTTP_X_FORWARDED_PROTO", "https"]]


# Each image-network setting: a value it refuses, the choices the message lists, a value in odd case and what it reads as.
IMAGE_SETTINGS = {
    "IMAGESEARCH_IMAGE_RUNTIME": (["onnxruntime", "gpu", ""], "auto, onnx, tensorflow", " TensorFlow ", "tensorflow"),
    "IMAGESEARCH_IMAGE_PRECISION": (["int4", "float32", ""], "fp32, int8", " INT8 ", "int8"),
}


@pytest.mark.parametrize(
    "name,value", [(name, value) for name, (refused, *_) in IMAGE_SETTINGS.items() for value in refused]
)
def test_an_unknown_image_setting_is_refused_where_settings_are_read(tmp_path, name, value):
    proc = load_settings(tmp_path, DEBUG="true", **{name: value})
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr and name in proc.stderr, proc.stderr
    assert IMAGE_SETTINGS[name][1] in proc.stderr


@pytest.mark.parametrize("name", IMAGE_SETTINGS)
def test_a_known_image_setting_is_accepted_in_any_case(tmp_path, name):
    _, _, typed, read = IMAGE_SETTINGS[name]
    probe = f"import django; from django.conf import settings as s; print(s.{name})"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=clean_env(tmp_path, DEBUG="true", **{name: typed}),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == read, proc.stderr
