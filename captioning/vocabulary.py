"""Word-level tokenizer with a JSON vocabulary (never pickle).

Text normalisation: lowercase, apostrophes dropped ("man's" -> "mans"), every other character that
is not a letter or digit becomes a space, then split on whitespace.  The special tokens always have
the same ids: ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3; real words follow,
most frequent first (ties broken alphabetically, so building is deterministic).

Plain Python, no TensorFlow, no Django.
"""

from __future__ import annotations

import json
import os
import re

from .files import write_atomic
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

PAD = "<pad>"
START = "<start>"
END = "<end>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

FORMAT = "imagesearch-vocabulary"
FORMAT_VERSION = 1

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


class VocabularyError(ValueError):
    """A vocabulary file is missing, unreadable or malformed."""


def normalize_words(text: str) -> list[str]:
    """Lowercase, strip punctuation, split: ``"A dog's ball."`` -> ``["a", "dogs", "ball"]``."""
    text = _APOSTROPHES.sub("", str(text).lower())
    return _NON_WORD.sub(" ", text).split()


class Tokenizer:
    """Maps caption text to token ids and back.

    ``Tokenizer.build(captions, min_count=5)`` keeps words seen at least 5 times;
    ``max_words=5000`` keeps the 5,000 most frequent words (both may be given).
    """

    def __init__(self, words: Sequence[str], *, min_count: int | None = None, max_words: int | None = None):
        words = list(words)
        seen = set()
        for w in words:
            if not isinstance(w, str) or not w or w in SPECIAL_TOKENS or w in seen:
                raise VocabularyError(f"invalid or duplicate vocabulary word: {w!r}")
            seen.add(w)
        self.words: list[str] = words
        self.index_word: list[str] = list(SPECIAL_TOKENS) + words
        self.word_index: dict[str, int] = {w: i for i, w in enumerate(self.index_word)}
        self.min_count = min_count
        self.max_words = max_words

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, captions: Iterable[str], *, min_count: int | None = 5, max_words: int | None = None) -> "Tokenizer":
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(normalize_words(caption))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if min_count is not None:
            ranked = [(w, c) for w, c in ranked if c >= min_count]
        if max_words is not None:
            ranked = ranked[: max(0, int(max_words))]
        return cls([w for w, _ in ranked], min_count=min_count, max_words=max_words)

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Number of ids, special tokens included (the model's output size)."""
        return len(self.index_word)

    def __len__(self) -> int:
        return self.size

    pad_id = PAD_ID
    start_id = START_ID
    end_id = END_ID
    unk_id = UNK_ID

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, add_special: bool = True, max_length: int | None = None) -> list[int]:
        """Text -> ids: ``<start> w1 ... wn <end>``; unknown words -> ``<unk>``.

        ``max_length`` caps the total length (special tokens included); a capped caption keeps
        its ``<end>`` so the model always learns to stop.
        """
        ids = [self.word_index.get(w, UNK_ID) for w in normalize_words(text)]
        if add_special:
            if max_length is not None:
                ids = ids[: max(0, max_length - 2)]
            return [START_ID] + ids + [END_ID]
        if max_length is not None:
            ids = ids[:max_length]
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True, stop_at_end: bool = True) -> str:
        """Ids -> text; stops at the first ``<end>`` and drops ``<pad>``/``<start>``/``<end>``."""
        out = []
        for i in ids:
            i = int(i)
            if stop_at_end and i == END_ID:
                break
            if i < 0 or i >= self.size:
                raise VocabularyError(f"token id {i} outside vocabulary of size {self.size}")
            if skip_special and i in (PAD_ID, START_ID, END_ID):
                continue
            out.append(self.index_word[i])
        return " ".join(out)

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Ids -> word list (up to the first ``<end>``, specials other than ``<unk>`` dropped)."""
        text = self.decode(ids)
        return text.split() if text else []

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "min_count": self.min_count,
            "max_words": self.max_words,
            "size": self.size,
            "words": self.words,
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "vocabulary") -> "Tokenizer":
        if not isinstance(data, dict):
            raise VocabularyError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise VocabularyError(f"{source}: not an imagesearch vocabulary (format={data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise VocabularyError(f"{source}: unsupported vocabulary format_version {data.get('format_version')!r}")
        if list(data.get("special_tokens", [])) != list(SPECIAL_TOKENS):
            raise VocabularyError(f"{source}: special tokens {data.get('special_tokens')!r} != {list(SPECIAL_TOKENS)!r}")
        words = data.get("words")
        if not isinstance(words, list):
            raise VocabularyError(f"{source}: 'words' must be a list")
        tok = cls(words, min_count=data.get("min_count"), max_words=data.get("max_words"))
        if "size" in data and data["size"] != tok.size:
            raise VocabularyError(f"{source}: declared size {data['size']} but holds {tok.size} tokens")
        return tok

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as UTF-8 JSON, atomically."""
        path = Path(path)

        def write(fh):
            json.dump(self.to_dict(), fh, ensure_ascii=False, indent=0)
            fh.write("\n")

        write_atomic(path, write, mode="w")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VocabularyError(f"vocabulary file {path} is unreadable or not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.index_word == other.index_word

    def __repr__(self) -> str:
        return f"Tokenizer(size={self.size}, min_count={self.min_count}, max_words={self.max_words})"
