"""Template helpers: highlighted captions and page links that keep the rest of the query string."""
from django import template
from django.utils.html import format_html, format_html_join

from searchindex.index import highlight_terms

register = template.Library()


@register.filter
def highlight(text, matched_terms):
    """The caption, escaped, with the words a search matched wrapped in <mark>."""
    return format_html_join(
        "",
        "{}",
        ((format_html("<mark>{}</mark>", piece) if is_match else piece,) for piece, is_match in highlight_terms(text, matched_terms)),
    )


@register.simple_tag(takes_context=True)
def page_url(context, number):
    """The current URL's query string with only the page number changed."""
    params = context["request"].GET.copy()
    params["page"] = number
    return "?" + params.urlencode()
