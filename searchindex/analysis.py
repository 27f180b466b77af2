"""The one analyzer used for documents and queries, and highlighting built on it.

Text is NFC-normalised, split into Unicode words (letters and digits, with inner apostrophes so
that "man's" and "don't" stay one word), each word NFKC-normalised and case-folded, English
stop words dropped, and the rest stemmed with Snowball English. Positions count every word,
stop words included, so a phrase matches only where its words stand at the same distances.
"""

import re
import threading
import unicodedata
from dataclasses import dataclass
from itertools import chain, compress, repeat
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


@dataclass(frozen=True, slots=True)
class Field:
    """A piece of a document's text with the weight of each of its words (1.0 = an ordinary word).

    A photo's description is several fields: its caption at one weight, alternative captions at
    another, single tag words at their probability. A word's term frequency in the document is the
    sum of the weights of its occurrences. Slots: a bulk rebuild holds a million of them per
    batch, and reads their attributes faster this way.
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


# Bulk analysis numbers every term, and keeps the analysed form of short field texts (a concept
# word, an object label: they repeat across photos by the thousand) in arrays, so that a batch's
# word occurrences are gathered by NumPy: per field, Python only reads its text and weight and
# looks the text up. Longer texts (captions, which rarely repeat) are analysed each time, all of
# a batch's at once.
_SHORT_FIELD = 40  # characters
_SHORT_FIELDS_LIMIT = 200_000  # short texts kept
_NUMBERED_TERMS_LIMIT = 1_000_000  # past this many numbered terms, a new numbering starts
_STOP, _UNSEEN, _END = -1, -2, -3  # the term number of a stop word; of a word not looked up yet; of _analyse's text end
# ASCII bytes: letters, digits (WORD_RE's word characters there) and "\0" as they are, the rest as spaces.
_ASCII_WORDS = bytes(c if chr(c).isalnum() or c == 0 else ord(" ") for c in range(128)) + bytes(range(128, 256))


@dataclass
class _Analysed:
    """Texts analysed, flat: per text its number of words and, from `start` on, `n_terms` entries
    of `terms` (term numbers) and `positions` (word positions within the text)."""

    n_words: np.ndarray
    n_terms: np.ndarray
    start: np.ndarray
    terms: np.ndarray
    positions: np.ndarray


class _TextCache:
    """Term numbers, and the analysed short texts in arrays grown in place.

    Texts are numbered in the order they are stored: the first `kept` are those in
    `text_number`; past them, a batch stores its other new texts, which the next batch overwrites.
    """

    def __init__(self):
        self.term_text: list[str] = []  # term number -> term
        self.term_number: dict[str, int] = {}
        self.word_number: dict[str | bytes, int] = {b"\0": _END}  # word as written (bytes in plain texts) -> term number
        self.text_number: dict[str, int] = {}
        self.kept = self.kept_entries = 0
        self.texts = _Analysed(*(np.zeros(1 << 12, dtype=np.int64) for _ in range(5)))

    def number_texts(self, texts: list[str]) -> np.ndarray:
        """Each text's number in self.texts; the texts not stored before are analysed and stored."""
        numbers = np.fromiter(map(self.text_number.get, texts, repeat(-1)), dtype=np.int64, count=len(texts))
        missing = np.flatnonzero(numbers < 0).tolist()
        if missing:
            missing_texts = list(map(texts.__getitem__, missing))
            new = list(dict.fromkeys(missing_texts))
            kept = [text for text in new if len(text) <= _SHORT_FIELD][: max(_SHORT_FIELDS_LIMIT - self.kept, 0)]
            kept, self.kept_entries = self._store(kept, self.kept, self.kept_entries)
            number = dict(zip(kept, range(self.kept, self.kept + len(kept))))
            self.text_number.update(number)
            self.kept += len(kept)
            others, _ = self._store([text for text in new if text not in number], self.kept, self.kept_entries)
            number.update(zip(others, range(self.kept, self.kept + len(others))))
            numbers[missing] = np.fromiter(map(number.__getitem__, missing_texts), dtype=np.int64, count=len(missing))
        return numbers

    def _store(self, texts: list[str], at: int, at_entry: int) -> tuple[list[str], int]:
        """Analyse texts into self.texts as text numbers at, at + 1, ... and entries from at_entry on.

        Returns the texts in the order they were numbered, and the end of their entries.
        """
        if not texts:
            return texts, at_entry
        texts, found = self._analyse(texts)
        end, end_entry = at + len(texts), at_entry + len(found.terms)
        stored = self.texts
        if end > len(stored.n_words) or end_entry > len(stored.terms):
            grown = [np.zeros(max(2 * len(old), 2 * size), dtype=np.int64) for old, size in
                     zip(vars(stored).values(), (end, end, end, end_entry, end_entry))]
            for new, old, size in zip(grown, vars(stored).values(), (at, at, at, at_entry, at_entry)):
                new[:size] = old[:size]
            stored = self.texts = _Analysed(*grown)
        stored.n_words[at:end], stored.n_terms[at:end] = found.n_words, found.n_terms
        stored.start[at:end] = found.start + at_entry
        stored.terms[at_entry:end_entry], stored.positions[at_entry:end_entry] = found.terms, found.positions
        return texts, end_entry

    def _analyse(self, texts: list[str]) -> tuple[list[str], _Analysed]:
        """(the texts reordered, their analysed form): split into words all at once, each word
        looked up (and analysed by _term the first time).

        Plain texts (ASCII without apostrophes, most captions) come first, joined: their words
        are the runs of letters and digits, which bytes.translate and bytes.split find some four
        times faster than WORD_RE; a "\0" word marks where each text ends.
        """
        is_plain = [text.isascii() and "'" not in text and "\0" not in text for text in texts]
        plain = list(compress(texts, is_plain))
        others = list(compress(texts, map(not_, is_plain)))
        words = (" \0 ".join(plain) + " \0").encode().translate(_ASCII_WORDS).split() if plain else []
        words_per_other = list(map(WORD_RE.findall, map(_nfc, others)))
        words += chain.from_iterable(words_per_other)
        numbers = np.fromiter(map(self.word_number.get, words, repeat(_UNSEEN)), dtype=np.int64, count=len(words))
        unseen = np.flatnonzero(numbers == _UNSEEN).tolist()
        if unseen:
            unseen_words = list(map(words.__getitem__, unseen))
            number = {word: self._word_number(word) for word in dict.fromkeys(unseen_words)}
            numbers[unseen] = np.fromiter(map(number.__getitem__, unseen_words), dtype=np.int64, count=len(unseen))
        ends = np.flatnonzero(numbers == _END)
        n_words = np.concatenate((np.diff(ends, prepend=-1) - 1, np.fromiter(map(len, words_per_other), dtype=np.int64)))
        numbers = np.delete(numbers, ends)
        text_start = np.cumsum(n_words) - n_words
        text = np.repeat(np.arange(len(texts)), n_words)
        is_term = numbers >= 0
        n_terms = np.bincount(text[is_term], minlength=len(texts))
        positions = (np.arange(len(numbers)) - text_start[text])[is_term]
        return plain + others, _Analysed(n_words, n_terms, np.cumsum(n_terms) - n_terms, numbers[is_term], positions)

    def _word_number(self, word) -> int:
        term = _term(word if isinstance(word, str) else word.decode())
        number = self.term_number.setdefault(term, len(self.term_text)) if term else _STOP
        if number == len(self.term_text):
            self.term_text.append(term)
        if len(self.word_number) < _TERMS_LIMIT:
            self.word_number[word] = number
        return number


_cache = _TextCache()
_cache_lock = threading.Lock()  # held while a batch is numbered and its occurrences gathered


def _occurrences(texts: list[str]) -> tuple[np.ndarray, ...]:
    """The word occurrences of a batch of field texts, gathered from their analysed forms.

    Returns each text's number of words and number of terms, each occurrence's term (a row of
    the returned vocabulary) and position within its text, and the vocabulary: the distinct
    terms in the order they first occur.
    """
    global _cache
    with _cache_lock:
        if len(_cache.term_text) > _NUMBERED_TERMS_LIMIT:
            _cache = _TextCache()
        number = _cache.number_texts(texts)
        stored = _cache.texts
        n_words, n_terms = stored.n_words[number], stored.n_terms[number]
        total = int(n_terms.sum())
        entry = np.repeat(stored.start[number] - (np.cumsum(n_terms) - n_terms), n_terms) + np.arange(total)
        occ_number, occ_position = stored.terms[entry], stored.positions[entry]
        first = np.full(len(_cache.term_text), total)  # each term's first occurrence (total: none)
        np.minimum.at(first, occ_number, np.arange(total))
        numbers = np.flatnonzero(first < total)
        numbers = numbers[np.argsort(first[numbers])]  # the distinct term numbers, by first occurrence
        vocabulary = list(map(_cache.term_text.__getitem__, numbers.tolist()))
    row = first  # reused: each term number's row in the vocabulary
    row[numbers] = np.arange(len(numbers))
    return n_words, n_terms, row[occ_number], occ_position, vocabulary


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


def weighted_postings(documents) -> Postings:
    """The postings of texts or sequences of fields, as weighted_terms describes them, many at once.

    Python reads each field's text and weight through C-level maps over the whole batch; the
    word occurrences are gathered (_occurrences) and grouped into postings by NumPy. A term's tf
    sums its weights in the order the words occur (np.bincount adds sequentially), so it is the
    same float whatever the batch.
    """
    fields_per_doc, fields = [], []
    for document in documents:
        document = document if isinstance(document, (list, tuple)) else as_fields(document)
        fields_per_doc.append(len(document))
        fields += document
    try:
        texts = list(map(_TEXT, fields))
    except AttributeError:  # (text, weight) pairs
        fields = as_fields(fields)
        texts = list(map(_TEXT, fields))
    weight = np.fromiter(map(_WEIGHT, fields), dtype=np.float64, count=len(fields))
    n_words, n_terms, occ_term, occ_position, vocabulary = _occurrences(texts)

    kept = (weight > 0) & np.isfinite(weight)
    field_doc = np.repeat(np.arange(len(fields_per_doc)), fields_per_doc)
    # A field starts FIELD_GAP positions past the end of the kept field before it in its document.
    advance = np.where(kept, n_words + FIELD_GAP, 0)
    before = np.concatenate(([0], np.cumsum(advance)))
    first_field = np.concatenate(([0], np.cumsum(fields_per_doc)))[:-1]
    offset = before[:-1] - before[first_field][field_doc]

    occ_field = np.repeat(np.arange(len(weight)), n_terms)
    if not kept.all():
        occ_keep = kept[occ_field]
        occ_field, occ_term, occ_position = occ_field[occ_keep], occ_term[occ_keep], occ_position[occ_keep]
    occ_doc = field_doc[occ_field]
    occ_position = occ_position + offset[occ_field]
    # A posting is a group of occurrences of one term in one document: `order` sorts the
    # occurrences by (document, term) and then by occurrence, so each group's occurrences come in
    # the order the words occur. The postings are numbered by their first occurrence.
    order, sorted_keys = _sort_with_order(occ_doc * max(len(vocabulary), 1) + occ_term)
    is_start = np.ones(len(order), dtype=bool)
    is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = np.flatnonzero(is_start)
    group_first = order[group_start]
    group_at = np.full(len(order), -1)  # the group whose first occurrence each occurrence is, if any
    group_at[group_first] = np.arange(len(group_first))
    by_first = group_at[group_at >= 0]  # the groups in posting order
    sizes = np.diff(group_start, append=len(order))[by_first]
    tf = np.bincount(np.cumsum(is_start) - 1, weights=weight[occ_field][order], minlength=len(group_start))[by_first]
    first = group_first[by_first]
    # Each posting's positions: its occurrences (ascending within its group of `order`) in posting order.
    gather = np.repeat(group_start[by_first] - (np.cumsum(sizes) - sizes), sizes) + np.arange(len(order))
    return Postings(
        vocabulary=vocabulary,
        per_document=np.bincount(occ_doc[first], minlength=len(fields_per_doc)),
        term=occ_term[first],
        tf=tf,
        position_count=sizes,
        positions=occ_position[order[gather]],
    )


def _sort_with_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(occurrences sorted by key and then by occurrence, the keys in that order), for non-negative int64 keys.

    One sort of int64s that pack the key above the occurrence number: NumPy's SIMD sort, several
    times faster than a stable argsort or np.unique's.
    """
    n = len(keys)
    bits = max(n.bit_length(), 1)
    if n and int(keys.max()).bit_length() + bits <= 63:
        packed = np.sort((keys << bits) | np.arange(n))
        return packed & ((1 << bits) - 1), packed >> bits
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


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
