"""Create the embedded set-up's data directory, static folder and secret key (first step of `make run`)."""
from django.conf import settings
from django.core.management.base import BaseCommand

from imagesearch.local import SECRET_KEY_FILE, set_up_data_dir


class Command(BaseCommand):
    help = "Create the data directory, its media and static folders and a secret key kept there (kept if present)."

    def handle(self, *args, **options):
        created = set_up_data_dir(settings.DATA_DIR, settings.MEDIA_ROOT, settings.STATIC_ROOT)
        key_file = settings.DATA_DIR / SECRET_KEY_FILE
        self.stdout.write(f"Data directory {settings.DATA_DIR} ready ({'new' if created else 'kept'} secret key in {key_file.name}).")
