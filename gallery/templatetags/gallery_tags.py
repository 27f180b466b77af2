"""Template helpers: highlighted captions, attention maps of content words, page links that keep the query string."""
import re

from django import template
from django.utils.html import format_html, format_html_join

from searchindex.index import highlight_terms, normalize_word

register = template.Library()

SPECIAL_TOKEN = re.compile(r"<\w+>")  # the model's <start>, <end>, <unk>: not words of the caption


@register.filter
def highlight(text, matched_terms):
    """The caption, escaped, with the words a search matched wrapped in <mark>."""
    return format_html_join(
        "",
        "{}",
        ((format_html("<mark>{}</mark>", piece) if is_match else piece,) for piece, is_match in highlight_terms(text, matched_terms)),
    )


@register.filter
def content_word_maps(attention):
    """The caption's attention maps ([[word, weights], ...]) of its content words only.

    The model also looks somewhere while writing "a" or "of"; those maps say nothing to a person.
    """
    return [entry for entry in attention or [] if not SPECIAL_TOKEN.fullmatch(entry[0]) and normalize_word(entry[0])]


@register.simple_tag(takes_context=True)
def page_url(context, number):
    """The current URL's query string with only the page number changed."""
    params = context["request"].GET.copy()
    params["page"] = number
    return "?" + params.urlencode()
