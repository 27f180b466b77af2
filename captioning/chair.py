"""Which objects a caption names, and the CHAIR object-hallucination rate (Rohrbach et al. 2018).

A caption that names a dog when there is no dog is worse for search than a vague one, and BLEU or
CIDEr barely notice it. CHAIR counts it: every caption is reduced to the object *groups* it names
(synonyms and plurals collapse: "puppies" and "dog" are both ``dog``), and a named group is
*hallucinated* when none of the photo's human captions names it (or a narrower group of it: a
caption saying "animal" is supported by a human saying "dog").

* CHAIR-i = hallucinated groups / all named groups (summed over captions);
* CHAIR-s = captions with at least one hallucinated group / all captions.

The word list is data (``data/chair_objects.json``, its source written in the file): the 80 COCO
categories with synonyms in the style of the paper's list (people collapse into ``person``, as
there) plus the concrete nouns that Flickr8k's captions use often. Phrases are matched longest
first, so "hot dog" is food and not a dog.

Plain Python, no Django, no TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .vocabulary import normalize_words

OBJECTS_PATH = Path(__file__).resolve().parent / "data" / "chair_objects.json"


def plural(word: str) -> str:
    """The regular English plural of a noun ("bus" -> "buses", "puppy" -> "puppies", "dog" -> "dogs")."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class ObjectVocabulary:
    """Object groups and the word sequences that name them."""

    phrases: Mapping[tuple[str, ...], str]  # ("hot", "dog") -> "food"
    broader: Mapping[str, str]  # group -> the group it is a kind of ("dog" -> "animal")
    groups: tuple[str, ...]

    @classmethod
    def from_groups(cls, groups: Sequence[Mapping]) -> "ObjectVocabulary":
        """Build from ``[{"name", "words", "kind_of"?, "plurals"?}, ...]`` (the JSON file's ``groups``).

        Words written in the list win over derived plurals ("glasses" is sunglasses, not two cups).
        """
        phrases: dict[tuple[str, ...], str] = {}
        for group in groups:
            for word in group["words"]:
                key = tuple(normalize_words(word))
                if key in phrases:
                    raise ValueError(f"object word {word!r} is in two groups: {phrases[key]} and {group['name']}")
                phrases[key] = group["name"]
        for group in groups:
            if group.get("plurals", True):
                for word in group["words"]:
                    *head, last = normalize_words(word)
                    phrases.setdefault((*head, plural(last)), group["name"])
        names = tuple(group["name"] for group in groups)
        broader = {group["name"]: group["kind_of"] for group in groups if group.get("kind_of")}
        unknown = set(broader.values()) - set(names)
        if unknown:
            raise ValueError(f"kind_of names unknown groups: {sorted(unknown)}")
        return cls(phrases=phrases, broader=broader, groups=names)

    @functools.cached_property
    def _longest(self) -> int:
        return max(len(p) for p in self.phrases)

    def groups_named(self, text: str | Sequence[str]) -> list[str]:
        """The object groups a caption names, in order of first mention, each once.

        ``text`` is a caption or its words. Longest phrases first: "hot dog" is food, not a dog.
        """
        words = normalize_words(text) if isinstance(text, str) else [w.lower() for w in text]
        found: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                group = self.phrases.get(tuple(words[i : i + n]))
                if group is not None:
                    if group not in found:
                        found.append(group)
                    i += n
                    break
            else:
                i += 1
        return found

    def supported(self, references: Iterable[str]) -> set[str]:
        """The groups the human captions name, plus every broader group of those."""
        out: set[str] = set()
        for reference in references:
            for group in self.groups_named(reference):
                while group and group not in out:
                    out.add(group)
                    group = self.broader.get(group)
        return out

    def hallucinated(self, text: str | Sequence[str], references: Iterable[str]) -> list[str]:
        """The groups ``text`` names that no reference supports."""
        supported = self.supported(references)
        return [g for g in self.groups_named(text) if g not in supported]


@functools.lru_cache(maxsize=4)
def load_object_vocabulary(path: str | os.PathLike = OBJECTS_PATH) -> ObjectVocabulary:
    """The shipped object word list (``data/chair_objects.json``), read once."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ObjectVocabulary.from_groups(data["groups"])


def chair(
    hypotheses: Mapping[str, str], references: Mapping[str, Sequence[str]], objects: ObjectVocabulary | None = None
) -> dict:
    """CHAIR-i and CHAIR-s (percent) of one caption per image against that image's human captions.

    Also per-image hallucinated groups (``per_image``) and the groups most often invented.
    """
    objects = objects or load_object_vocabulary()
    named = invented = with_invented = 0
    per_image: dict[str, list[str]] = {}
    counts: Counter = Counter()
    for key, text in hypotheses.items():
        groups = objects.groups_named(text)
        supported = objects.supported(references[key])
        wrong = [g for g in groups if g not in supported]
        named += len(groups)
        invented += len(wrong)
        with_invented += bool(wrong)
        counts.update(wrong)
        per_image[key] = wrong
    return {
        "CHAIR-i": round(100.0 * invented / named, 2) if named else 0.0,
        "CHAIR-s": round(100.0 * with_invented / len(hypotheses), 2) if hypotheses else 0.0,
        "objects_named": named,
        "objects_invented": invented,
        "most_invented": counts.most_common(10),
        "per_image": per_image,
    }
