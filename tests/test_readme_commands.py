"""Every management command of the README works as a user types it after `make run`'s set-up.

`make run`'s set-up steps run on a fresh data directory; then each command is run in a shell
exactly as the README writes it, with no DEBUG=true and no SECRET_KEY in the environment. The
examples that do real work run for real on tiny inputs (caption, search, export_captions); every
other command of the README's table runs with --help, which loads the settings and the command.
Only the file names of the examples are replaced by files of the test.
"""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .conftest import make_photo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PREFIX = ".venv/bin/python manage.py "
# The examples that run for real (the others of the README run with --help).
RUN_FOR_REAL = {"caption", "search", "export_captions"}


def readme_examples() -> list[str]:
    """The `.venv/bin/python manage.py ...` lines of the README's shell blocks, comments removed."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        lines += [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith(PREFIX)]
    return lines


def table_commands() -> list[str]:
    """The command names in the first column of the README's management-command table."""
    table = README.split("## Management commands", 1)[1].split("\n## ", 1)[0]
    names = []
    for row in table.splitlines():
        if row.startswith("| `"):
            names += re.findall(r"`([a-z_]+)", row.split("|")[1])
    return names


@pytest.fixture(scope="module")
def local_site(tmp_path_factory):
    """A fresh data directory after `make run`'s set-up steps, and the environment of a user's shell."""
    data_dir = tmp_path_factory.mktemp("data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_", "IMAGESEARCH_", "DJANGO_"))}
    for name in ("DEBUG", "SECRET_KEY"):
        env.pop(name, None)
    env["IMAGESEARCH_DATA_DIR"] = str(data_dir)
    # The converted InceptionV3 weights are shared (prepare_models converts them once per machine).
    env["IMAGESEARCH_FEATURE_DIR"] = str(ROOT / "var" / "models")
    # As in the Makefile's `run` target, without seed_demo (captioning eight photos) and runserver.
    for step in ("setup_local", "prepare_models", "migrate --no-input", "create_local_admin"):
        run(f"{PREFIX}{step}", {**env, "DEBUG": "true"})
    return env, tmp_path_factory.mktemp("user-files")


def run(command: str, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_readme_lists_the_commands_checked_here():
    assert {"caption", "search", "export_captions", "import_images", "changepassword"} <= {
        line[len(PREFIX):].split()[0] for line in readme_examples()
    }
    assert {"import_images", "caption", "search", "export_captions", "setup_local"} <= set(table_commands())


def test_each_readme_example_works_as_typed(local_site):
    env, files = local_site
    photo = files / "photo.jpg"
    photo.write_bytes(make_photo(seed=3, size=(120, 90)))
    outputs = {}
    for line in readme_examples():
        name = line[len(PREFIX):].split()[0]
        if name not in RUN_FOR_REAL:
            line = f"{PREFIX}{name} --help"
        command = line.replace("photo.jpg", shlex.quote(str(photo))).replace(
            "captions.csv", shlex.quote(str(files / "captions.csv"))
        )
        proc = run(command, env)
        outputs[name] = proc.stdout + proc.stderr
    caption = json.loads(outputs["caption"].splitlines()[0])
    assert caption["caption"].strip()
    assert outputs["search"].strip()  # an empty gallery: "No matches." or why not
    assert (files / "captions.csv").read_text().startswith("original_name,sha256,caption")


def test_each_command_of_the_table_starts(local_site):
    env, _ = local_site
    for name in table_commands():
        assert "usage:" in run(f"{PREFIX}{name} --help", env).stdout
