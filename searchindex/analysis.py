"""The one analyzer used for documents and queries, and highlighting built on it.

Text is NFC-normalised, split into Unicode words (letters and digits, with inner apostrophes so
that "man's" and "don't" stay one word), each word NFKC-normalised and case-folded, English
stop words dropped, and the rest stemmed with Snowball English. Positions count every word,
stop words included, so a phrase matches only where its words stand at the same distances.
"""

import re
import unicodedata
from dataclasses import dataclass
from itertools import chain, compress
from operator import attrgetter, not_

import numpy as np

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
_FIELD_TERMS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {}
_FIELD_TERMS_LIMIT = 200_000
_SHORT_FIELD = 40  # characters; longer texts (captions) rarely repeat and are analysed each time


def _field_terms(text: str) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """A field's text as (its terms, their positions within the field, its number of words)."""
    words = WORD_RE.findall(_nfc(text))
    terms = list(map(_TERMS.get, words))  # "" for a stop word, None for a word not seen yet
    if None in terms:
        terms = [_term(word) if term is None else term for term, word in zip(terms, words)]
    found = (tuple(filter(None, terms)), tuple(compress(range(len(terms)), terms)), len(words))
    if len(text) <= _SHORT_FIELD and len(_FIELD_TERMS) < _FIELD_TERMS_LIMIT:
        _FIELD_TERMS[text] = found
    return found


@dataclass(frozen=True)
class Postings:
    """The postings of several documents, flat: document after document, each document's terms in
    the order of their first occurrence, each term's positions ascending.

    vocabulary holds the distinct terms; a posting names its term by its row there.
    """

    vocabulary: list[str]
    per_document: np.ndarray  # int64 [documents]: how many postings each document has
    term: np.ndarray  # int64 [postings]: row in vocabulary
    tf: np.ndarray  # float64 [postings]: weighted term frequency
    position_count: np.ndarray  # int64 [postings]
    positions: np.ndarray  # int64 [sum of position_count]


_TEXT, _WEIGHT = attrgetter("text"), attrgetter("weight")


def _texts_and_weights(document) -> tuple[list, list[float]]:
    """A document's field texts and weights (as_fields), read through C-level maps where it is a list of Fields."""
    fields = document if isinstance(document, (list, tuple)) else as_fields(document)
    try:
        return list(map(_TEXT, fields)), list(map(float, map(_WEIGHT, fields)))
    except AttributeError:  # (text, weight) pairs
        fields = as_fields(fields)
        return list(map(_TEXT, fields)), list(map(float, map(_WEIGHT, fields)))


def weighted_postings(documents) -> Postings:
    """The postings of texts or sequences of fields, as weighted_terms describes them, many at once.

    Python touches each field a few times through C-level list operations; the word occurrences
    are grouped into postings by NumPy. A term's tf sums its weights in the order the words occur
    (np.bincount adds sequentially), so it is the same float whatever the batch.
    """
    fields_per_doc, weights, n_terms, n_words, terms, positions = [], [], [], [], [], []
    cached = _FIELD_TERMS.get
    for document in documents:
        texts, field_weights = _texts_and_weights(document)
        fields_per_doc.append(len(texts))
        weights += field_weights
        found = list(map(cached, texts))
        for missing in compress(range(len(found)), map(not_, found)):  # texts not analysed before: captions, mostly
            found[missing] = _field_terms(texts[missing])
        if found:
            field_terms, field_positions, field_words = zip(*found)
            n_terms += map(len, field_terms)
            n_words += field_words
            terms += chain.from_iterable(field_terms)
            positions += chain.from_iterable(field_positions)

    weight = np.fromiter(weights, dtype=np.float64, count=len(weights))
    kept = (weight > 0) & np.isfinite(weight)
    field_doc = np.repeat(np.arange(len(fields_per_doc)), fields_per_doc)
    # A field starts FIELD_GAP positions past the end of the kept field before it in its document.
    advance = np.where(kept, np.fromiter(n_words, dtype=np.int64, count=len(n_words)) + FIELD_GAP, 0)
    before = np.concatenate(([0], np.cumsum(advance)))
    first_field = np.concatenate(([0], np.cumsum(fields_per_doc)))[:-1]
    offset = before[:-1] - before[first_field][field_doc]

    vocabulary = list(dict.fromkeys(terms))
    rows = dict(zip(vocabulary, range(len(vocabulary))))
    occ_field = np.repeat(np.arange(len(weight)), np.fromiter(n_terms, dtype=np.int64, count=len(n_terms)))
    occ_term = np.fromiter(map(rows.__getitem__, terms), dtype=np.int64, count=len(terms))
    occ_keep = kept[occ_field]
    occ_field, occ_term = occ_field[occ_keep], occ_term[occ_keep]
    occ_doc = field_doc[occ_field]
    occ_position = np.fromiter(positions, dtype=np.int64, count=len(positions))[occ_keep] + offset[occ_field]
    posting, first, order, group_start = _group(occ_doc * max(len(vocabulary), 1) + occ_term)
    sizes = np.bincount(posting, minlength=len(first))
    # Each posting's positions: its occurrences (ascending within its group of `order`) in posting order.
    starts = np.concatenate(([0], np.cumsum(sizes)))[:-1]
    gather = np.repeat(group_start - starts, sizes) + np.arange(len(posting))
    return Postings(
        vocabulary=vocabulary,
        per_document=np.bincount(occ_doc[first], minlength=len(fields_per_doc)),
        term=occ_term[first],
        tf=np.bincount(posting, weights=weight[occ_field], minlength=len(first)),
        position_count=sizes,
        positions=occ_position[order[gather]],
    )


def _group(keys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Occurrences grouped by key, groups numbered by their first occurrence.

    Returns (group number of each occurrence, first occurrence of each group, occurrences
    sorted by key and then by occurrence, where each group starts in that order). One sort of
    int64s that pack the key above the occurrence number: NumPy's SIMD sort, several times faster
    than a stable argsort or np.unique's.
    """
    n = len(keys)
    bits = max(n.bit_length(), 1)
    if n and int(keys.max()).bit_length() + bits <= 63:
        packed = np.sort((keys << bits) | np.arange(n))
        order, sorted_keys = packed & ((1 << bits) - 1), packed >> bits
    else:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(is_start)
    first = order[starts]
    by_first = np.sort((first << bits) | np.arange(len(first))) & ((1 << bits) - 1)  # first occurrences are distinct
    number = np.empty(len(first), dtype=np.int64)
    number[by_first] = np.arange(len(first))
    posting = np.empty(n, dtype=np.int64)
    posting[order] = number[np.cumsum(is_start) - 1]
    return posting, first[by_first], order, starts[by_first]


def weighted_terms(document) -> dict[str, tuple[float, list[int]]]:
    """{term: (weighted term frequency, [positions])} of a text or a sequence of fields.

    Positions count every word of every field, stop words included; each field after the first
    starts FIELD_GAP positions past the end of the one before. Fields of weight <= 0 and
    non-finite weights are ignored.
    """
    postings = weighted_postings([document])
    positions = postings.positions.tolist()
    ends = np.cumsum(postings.position_count).tolist()
    return {
        postings.vocabulary[term]: (tf, positions[end - count : end])
        for term, tf, count, end in zip(postings.term.tolist(), postings.tf.tolist(), postings.position_count.tolist(), ends)
    }


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
