"""Query syntax: free words (any may match), "quoted phrases" (must occur), -word or -"phrase" (must not).

Parsing never raises: a query that cannot be searched comes back with a message for the person.
"""

import re
import unicodedata
from dataclasses import dataclass, field

from .analysis import as_fields, analyze_with_positions, tokens, weighted_terms

MAX_QUERY_CHARS = 500
MAX_QUERY_TERMS = 32

_ITEM_RE = re.compile(r'(-?)"([^"]*)(?:"|$)|(\S+)')


@dataclass
class Interpretation:
    """How the query was understood, for showing next to the results."""

    terms: list[str] = field(default_factory=list)  # words searched for, as typed (one per index term)
    phrases: list[str] = field(default_factory=list)  # phrases that must occur, as typed
    excluded: list[str] = field(default_factory=list)  # words and phrases that must not occur, as typed
    ignored: list[str] = field(default_factory=list)  # stop words left out
    unknown: list[str] = field(default_factory=list)  # words that no document contains, as typed


@dataclass
class ParsedQuery:
    terms: list[str] = field(default_factory=list)  # scored terms, repeats kept (query term frequency)
    weights: dict[str, float] | None = None  # weighted term frequencies (queries made of fields); else counts of terms
    phrases: list[list[tuple[str, int]]] = field(default_factory=list)  # [(term, offset), ...] each
    excluded_terms: list[str] = field(default_factory=list)
    excluded_phrases: list[list[tuple[str, int]]] = field(default_factory=list)
    surface: dict[str, str] = field(default_factory=dict)  # index term -> the word typed for it first
    interpretation: Interpretation = field(default_factory=Interpretation)
    message: str | None = None


    def frequencies(self) -> dict[str, float]:
        """Query term frequency of each scored term, in first-occurrence order."""
        if self.weights is not None:
            return dict(self.weights)
        counts: dict[str, float] = {}
        for term in self.terms:
            counts[term] = counts.get(term, 0) + 1
        return counts


def _relative(analyzed):
    first = analyzed[0][1]
    return [(term, position - first) for term, position in analyzed]


def _binary(query: str) -> bool:
    return any(
        (unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r") or c == "\ufffd" for c in query
    )


def parse_query(query) -> ParsedQuery:
    """Split a query into scored terms, required phrases and exclusions, or explain why not."""
    if not isinstance(query, str):
        return ParsedQuery(message="The query must be text.")
    if _binary(query):
        return ParsedQuery(message="The query contains control or binary characters; type words to search for.")
    query = query.strip()
    if not query:
        return ParsedQuery(message="Type a word or a phrase to search for.")
    if len(query) > MAX_QUERY_CHARS:
        return ParsedQuery(message=f"The query is too long ({len(query)} characters; at most {MAX_QUERY_CHARS}).")

    parsed = ParsedQuery()
    seen = parsed.interpretation
    n_terms = 0
    for match in _ITEM_RE.finditer(query):
        minus, quoted, word = match.group(1), match.group(2), match.group(3)
        excluded = bool(minus) or (word is not None and word.startswith("-") and len(word) > 1)
        text = quoted if quoted is not None else (word[1:] if excluded else word)
        analyzed = analyze_with_positions(text)
        for surface, term, _, _ in tokens(text):
            if term is None and surface.lower() not in map(str.lower, seen.ignored):  # each left-out word once
                seen.ignored.append(surface)
        if not analyzed:
            continue
        n_terms += len(analyzed)
        phrase = quoted is not None or len(analyzed) > 1
        if excluded:
            seen.excluded.append(f'"{text}"' if quoted is not None else text)
            if phrase:
                parsed.excluded_phrases.append(_relative(analyzed))
            else:
                parsed.excluded_terms.append(analyzed[0][0])
            continue
        if quoted is not None:
            seen.phrases.append(text)
            if len(analyzed) > 1:
                parsed.phrases.append(_relative(analyzed))
            else:  # a one-word phrase: the word must occur
                parsed.phrases.append([(analyzed[0][0], 0)])
        parsed.terms.extend(term for term, _ in analyzed)
        for surface, term, _, _ in tokens(text):
            if term is not None:
                parsed.surface.setdefault(term, surface)

    if n_terms > MAX_QUERY_TERMS:
        return ParsedQuery(message=f"The query has too many words ({n_terms}; at most {MAX_QUERY_TERMS}).")
    seen.terms = list(parsed.surface.values())
    if not parsed.terms:
        if parsed.excluded_terms or parsed.excluded_phrases:
            parsed.message = "Add a word to search for: excluding words alone matches nothing."
        elif seen.ignored:
            parsed.message = "The query has only very common words (such as “the” or “a”); add a more specific word."
        else:
            parsed.message = "The query has no words to search for."
    return parsed


def parse_fields(document) -> ParsedQuery:
    """A query made of weighted fields (a description of a photo, to find photos like it).

    No syntax: every word is scored with its field's weight; nothing is required or excluded.
    """
    try:
        fields = as_fields(document)
        grouped = weighted_terms(fields)
    except (TypeError, ValueError):
        return ParsedQuery(message="The query must be text fields with numeric weights.")
    parsed = ParsedQuery(terms=list(grouped), weights={term: tf for term, (tf, _) in grouped.items()})
    for item in fields:
        for surface, term, _, _ in tokens(item.text):
            if term is not None:
                parsed.surface.setdefault(term, surface)
    parsed.interpretation.terms = [parsed.surface[term] for term in grouped]
    if not grouped:
        parsed.message = "The query has no words to search for."
    return parsed
