"""The one analyzer used for documents and queries, and highlighting built on it.

Text is NFC-normalised, split into Unicode words (letters and digits, with inner apostrophes so
that "man's" and "don't" stay one word), each word NFKC-normalised and case-folded, English
stop words dropped, and the rest stemmed with Snowball English. Positions count every word,
stop words included, so a phrase matches only where its words stand at the same distances.
"""

import re
import unicodedata

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


def positions_by_term(text: str) -> dict[str, list[int]]:
    """{term: [positions]} of a text, in first-occurrence order: what a document's postings hold."""
    grouped: dict[str, list[int]] = {}
    for position, word in enumerate(WORD_RE.findall(_nfc(text))):
        term = _term(word)
        if term:
            if term in grouped:
                grouped[term].append(position)
            else:
                grouped[term] = [position]
    return grouped


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
