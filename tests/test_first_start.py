"""The first minutes after a start: a quiet console, the model loading in the background, pages that say so."""
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from django.urls import reverse

from captioning import services

ROOT = Path(__file__).resolve().parent.parent


def local_env(data_dir, **env):
    """The embedded default (DEBUG, SQLite in data_dir, no broker) for a subprocess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "IMAGESEARCH_", "TF_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "imagesearch.settings", "IMAGESEARCH_DATA_DIR": str(data_dir), "DEBUG": "true"})
    clean.update(env)
    return clean


def run_python(code: str, tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=local_env(tmp_path, **env), capture_output=True, text=True, timeout=120)


def test_django_setup_does_not_import_tensorflow(tmp_path):
    proc = run_python("import sys, django; django.setup(); print('tensorflow' in sys.modules, 'keras' in sys.modules)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_tensorflow_notices_are_silenced_unless_log_level_debug(tmp_path):
    code = "import os, django; django.setup(); print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    assert run_python(code, tmp_path).stdout.strip() == "2"
    assert run_python(code, tmp_path, LOG_LEVEL="DEBUG").stdout.strip() == "None"


def test_native_notices_are_dropped_and_other_lines_kept(tmp_path):
    code = (
        "import os; from captioning.native_log import native_notices_dropped\n"
        "with native_notices_dropped():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1796284419.503786   16366 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    os.write(2, b'\"GET / HTTP/1.1\" 200 5611\\n')\n"
        "    os.write(2, b'E0000 00:00:1796284419.503786   16366 x.cc:1] a real error\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ['"GET / HTTP/1.1" 200 5611', "E0000 00:00:1796284419.503786   16366 x.cc:1] a real error", "after"]


def test_a_django_log_line_is_printed_once(tmp_path):
    proc = run_python("import django, logging; django.setup(); logging.getLogger('django').info('hello once')", tmp_path)
    assert proc.stderr.count("hello once") == 1, proc.stderr


def test_in_process_tasks_need_no_broker_and_say_nothing(tmp_path):
    code = "import django; django.setup(); from gallery.tasks import caption_pending; print(caption_pending.delay(1e9).get())"
    for step in ("setup_local", "migrate"):
        subprocess.run([sys.executable, "manage.py", step], cwd=ROOT, env=local_env(tmp_path), check=True, capture_output=True)
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # neither "No hostname was supplied" nor "Task ... succeeded"


def test_the_model_preloads_in_the_background_and_pages_say_so(client, monkeypatch, caplog, db):
    release = threading.Event()

    class Loading:
        version = "v-test"
        warmed_up = False

        def describe_arrays(self, arrays):
            Loading.warmed_up = len(arrays) == 1 and arrays[0].shape == (299, 299, 3)

    def slow_load(*args, **kwargs):
        release.wait(10)
        return Loading()

    monkeypatch.setattr(services, "_captioner", None)
    monkeypatch.setattr("captioning.inference.ImageCaptioner.from_dirs", slow_load)
    with caplog.at_level(logging.INFO, logger="captioning.services"):
        thread = services.preload_captioner_in_background()
        for _ in range(100):  # until the loader holds the lock
            if services.captioner_loading():
                break
            threading.Event().wait(0.02)
        assert "The captioning model is loading" in client.get(reverse("gallery:index")).content.decode()
        release.set()
        thread.join(10)
    assert not services.captioner_loading() and services._captioner.version == "v-test"
    assert "The captioning model is loading" not in client.get(reverse("gallery:index")).content.decode()
    assert "Captioning model v-test ready" in caplog.text
    assert Loading.warmed_up  # the first real caption does not pay for TensorFlow's tracing


def test_a_worker_process_warms_the_captioner_up_with_a_batch_before_its_first_task(monkeypatch, settings):
    """The first task must not pay for TensorFlow's tracing and ONNX Runtime's planning of the batch shape."""
    from captioning.inference import FEATURE_BATCH
    from gallery import tasks

    batches = []

    class Warming:
        def describe_arrays(self, arrays):
            batches.append([a.shape for a in arrays])

    monkeypatch.setattr(services, "get_captioner", Warming)
    settings.IMAGESEARCH_CAPTION_BATCH = 16
    tasks.load_model_in_worker_process()
    assert batches == [[(299, 299, 3)] * FEATURE_BATCH]
