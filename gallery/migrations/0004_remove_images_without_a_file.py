"""Images saved by the old admin "Add image" form had no file and no hash: nothing can show or
caption them, and they broke the pages. Admin now adds photos through ingest; remove those rows."""
from django.db import migrations


def remove_images_without_a_file(apps, schema_editor):
    apps.get_model("gallery", "Image").objects.filter(file="").delete()


class Migration(migrations.Migration):
    dependencies = [("gallery", "0003_object_tags")]
    operations = [migrations.RunPython(remove_images_without_a_file, migrations.RunPython.noop)]
