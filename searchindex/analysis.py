"""The one analyzer used for documents and queries, and highlighting built on it.

Text is NFC-normalised, split into Unicode words (letters and digits, with inner apostrophes so
that "man's" and "don't" stay one word), each word NFKC-normalised and case-folded, English
stop words dropped, and the rest stemmed with Snowball English. Positions count every word,
stop words included, so a phrase matches only where its words stand at the same distances.
"""

import math
import re
import unicodedata
from dataclasses import dataclass

import snowballstemmer

# Snowball's English stop-word list (snowballstemmer.org/algorithms/english/stop.txt): short and
# conservative, unlike lists that drop words such as "front", "top" or "fire" that describe photos.
STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those am is are was were be been being have has had having do does did
    doing would should could ought i'm you're he's she's it's we're they're i've you've we've
    they've i'd you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll they'll isn't
    aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't won't wouldn't shan't
    shouldn't can't cannot couldn't mustn't let's that's who's what's here's there's when's
    where's why's how's a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very
    """.split()
)

WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

_stemmer = snowballstemmer.stemmer("english")
MAX_WORD = 64  # longer "words" (pasted hashes, say) are cut, in documents and queries alike
_TERMS: dict[str, str] = {}  # word as written -> term, "" for a stop word; vocabularies are small
_TERMS_LIMIT = 500_000


def _term(word: str) -> str:
    term = _TERMS.get(word)
    if term is None:
        folded = unicodedata.normalize("NFKC", word[:MAX_WORD]).casefold().replace("’", "'")
        term = "" if folded in STOP_WORDS else _stemmer.stemWord(folded)
        if len(_TERMS) < _TERMS_LIMIT:
            _TERMS[word] = term
    return term


def normalize_word(word: str) -> str | None:
    """The index term of one word: NFKC, case-folded, stemmed; None for a stop word."""
    return _term(word) or None


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def tokens(text: str) -> list[tuple[str, str | None, int, int]]:
    """Every word as (surface, term or None, start, end), offsets into the NFC form of the text."""
    text = _nfc(text)
    return [(m.group(), normalize_word(m.group()), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def analyze_with_positions(text: str) -> list[tuple[str, int]]:
    """Index terms with their word positions (stop words keep their slot but are not returned)."""
    out = []
    for position, word in enumerate(WORD_RE.findall(_nfc(text))):
        term = _term(word)
        if term:
            out.append((term, position))
    return out


@dataclass(frozen=True)
class Field:
    """A piece of a document's text with the weight of each of its words (1.0 = an ordinary word).

    A photo's description is several fields: its caption at one weight, alternative captions at
    another, single tag words at their probability. A word's term frequency in the document is the
    sum of the weights of its occurrences.
    """

    text: str
    weight: float = 1.0


# Positions of consecutive fields are this far apart, so that no phrase (a query holds at most
# MAX_QUERY_CHARS = 500 characters, fewer than 256 words) matches across two fields.
FIELD_GAP = 256


def as_fields(document) -> list[Field]:
    """A plain string is one field of weight 1; a sequence of Fields (or (text, weight) pairs) is itself."""
    if isinstance(document, str):
        return [Field(document)]
    return [item if isinstance(item, Field) else Field(*item) for item in document]


# Short field texts (a concept word, an object label) repeat across photos by the thousand: their
# terms are kept, so that bulk indexing splits and looks up each such text once.
_FIELD_TERMS: dict[str, tuple[tuple[tuple[str, int], ...], int]] = {}
_FIELD_TERMS_LIMIT = 200_000
_SHORT_FIELD = 40  # characters; longer texts (captions) rarely repeat and are analysed each time


def _field_terms(text: str) -> tuple[tuple[tuple[str, int], ...], int]:
    """((term, position within the field), ...) of a field's text, and its number of words."""
    found = _FIELD_TERMS.get(text)
    if found is None:
        words = WORD_RE.findall(_nfc(text))
        found = (tuple((term, position) for position, word in enumerate(words) if (term := _term(word))), len(words))
        if len(text) <= _SHORT_FIELD and len(_FIELD_TERMS) < _FIELD_TERMS_LIMIT:
            _FIELD_TERMS[text] = found
    return found


def weighted_terms(document) -> dict[str, tuple[float, list[int]]]:
    """{term: (weighted term frequency, [positions])} of a text or a sequence of fields.

    Positions count every word of every field, stop words included; each field after the first
    starts FIELD_GAP positions past the end of the one before. Fields of weight <= 0 and
    non-finite weights are ignored.
    """
    tfs, positions = weighted_terms_apart(document)
    return {term: (tf, positions[term]) for term, tf in tfs.items()}


def weighted_terms_apart(document) -> tuple[dict[str, float], dict[str, list[int]]]:
    """weighted_terms as two dicts with the terms in the same order, {term: tf} and {term: [positions]}.

    For bulk indexing, which takes the values of each dict whole rather than a pair per term.
    """
    tfs: dict[str, float] = {}
    positions: dict[str, list[int]] = {}
    offset = 0
    for item in as_fields(document):
        weight = float(item.weight)
        if not (weight > 0 and math.isfinite(weight)):
            continue
        terms, n_words = _field_terms(item.text)
        for term, position in terms:
            if term in tfs:
                tfs[term] += weight
                positions[term].append(offset + position)
            else:
                tfs[term] = weight
                positions[term] = [offset + position]
        offset += n_words + FIELD_GAP
    return tfs, positions


def analyze(text: str) -> list[str]:
    """Index terms of a text, in order, repeats kept (the analyzer handed to TfidfVectorizer)."""
    return [term for term, _ in analyze_with_positions(text)]


def highlight_terms(text: str, matched) -> list[tuple[str, bool]]:
    """Split a text into (segment, is_match) pieces, marking words whose term is in `matched`.

    `matched` is a hit's matched_terms. Segments join back to the NFC form of the text, so a
    template can escape each one and wrap the matches in <mark>.
    """
    matched = set(matched)
    text = _nfc(text)
    pieces, last = [], 0
    for _, term, start, end in tokens(text):
        if term is not None and term in matched:
            if start > last:
                pieces.append((text[last:start], False))
            pieces.append((text[start:end], True))
            last = end
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces
