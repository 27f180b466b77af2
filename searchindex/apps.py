from django.apps import AppConfig


class SearchIndexConfig(AppConfig):
    """TF-IDF inverted index of plain (id, text) documents."""

    name = "searchindex"
    verbose_name = "Search index"
    default_auto_field = "django.db.models.BigAutoField"
