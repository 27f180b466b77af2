"""A read-only view of the search index in Django admin: terms with their document frequency,
the most frequent terms and the index's size. Only searchindex.index writes the index."""
from django.contrib import admin

from . import index
from .models import Term


@admin.register(Term)
class TermAdmin(admin.ModelAdmin):
    change_list_template = "admin/searchindex/term/change_list.html"
    list_display = ["term", "documents"]
    search_fields = ["text"]
    ordering = ["-df", "text"]
    list_per_page = 100
    show_full_result_count = False

    @admin.display(description="Term", ordering="text")
    def term(self, obj):
        return obj.text

    @admin.display(description="Documents containing it", ordering="df")
    def documents(self, obj):
        return obj.df

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "index_stats": index.index_stats(top=20)}
        return super().changelist_view(request, extra_context)
