"""The embedded local set-up's files: the data directory and the secret key kept in it.

Settings only read (`read_secret_key_file`); `manage.py setup_local` (run by `make run`) writes
(`set_up_data_dir`), so importing the settings never touches the disk.
"""
import os
import secrets
from pathlib import Path

SECRET_KEY_FILE = "secret_key"


def read_secret_key_file(data_dir: Path) -> str:
    """The key kept in the data directory by the set-up step, or "" when there is none."""
    try:
        return (data_dir / SECRET_KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def set_up_data_dir(data_dir: Path, *folders: Path) -> bool:
    """Create the data directory, the given folders and a secret key readable by the owner only.

    Run again, it keeps the existing key (sessions and password-reset links stay valid); returns
    whether a new key was written.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(data_dir / SECRET_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50))
    return True
