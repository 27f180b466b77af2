"""Concept-head research: train heads on cached features and score the dev harness in memory.

Not part of the product. Reuses the product's analyzer (searchindex.analysis), document builder
(gallery.descriptions.document_fields) and word queries (gallery.search_quality.word_queries);
the ranking (TF-IDF cosine, idf = ln((1+n)/(1+df)) + 1, hits ordered by score then document id)
is re-implemented with sparse matrices so that hundreds of designs take seconds, and checked
against the harness's own ``evaluate_design`` (``python bench/concept_tries.py check``).

    python bench/concept_tries.py prep dev|train   # pooled features
    python bench/concept_tries.py classes dev|train   # EfficientNet class probabilities
    python bench/concept_tries.py descriptions     # the captioner's dev descriptions
    python bench/concept_tries.py check     # fast scorer == gallery.search_quality.evaluate_design
"""

from __future__ import annotations

import math
import os
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
WORK = Path(os.environ.get("CONCEPT_TRIES_DIR", "/work/wt/concepts-out/research"))
DATA = ROOT.parent / "shared" / "datasets" / "flickr8k"
if not DATA.is_dir():
    DATA = Path("/work/shared/datasets/flickr8k")


def setup():
    import django

    django.setup()


# ------------------------------------------------------------------------------------ data
def _dirs():
    from django.conf import settings

    from captioning import features as feature_store

    var = Path(settings.BASE_DIR) / "var"
    return feature_store.default_cache_dir(var, DATA / "images"), feature_store.default_class_cache_dir(var, DATA / "images")


def prep(split):
    """Cache once per split: mean- and max-pooled InceptionV3 features and EfficientNet class probabilities."""
    setup()
    from captioning import evaluation
    from captioning import features as feature_store

    WORK.mkdir(parents=True, exist_ok=True)
    cache_dir, class_dir = _dirs()
    names, refs = evaluation.load_split(DATA, split)
    if os.environ.get("PARTIAL"):  # only the photos cached so far (while the cache is being written)
        names = [n for n in names if feature_store.cache_path(cache_dir, n).is_file()]
        refs = {n: refs[n] for n in names}
        split += "_partial"
    mean = np.empty((len(names), 2048), np.float32)
    mx = np.empty((len(names), 2048), np.float32)
    for i, n in enumerate(names):
        f = feature_store.load_feature(cache_dir, n).astype(np.float32)
        mean[i], mx[i] = f.mean(0), f.max(0)
    with open(WORK / f"{split}.pkl", "wb") as fh:
        pickle.dump({"names": names, "refs": refs, "mean": mean, "max": mx}, fh, protocol=4)
    print(split, len(names), flush=True)


def prep_classes(split):
    """The EfficientNet class probabilities of a split (written by the lead's cache run)."""
    setup()
    from captioning import evaluation
    from captioning import features as feature_store

    names, _ = evaluation.load_split(DATA, split)
    np.save(WORK / f"{split}_classes.npy", feature_store.load_class_probabilities(_dirs()[1], names))


def prep_descriptions():
    """The captioner's dev descriptions (caption, beam alternatives, its concept words), without object labels."""
    setup()
    from django.conf import settings

    from captioning import evaluation
    from captioning.inference import ImageCaptioner
    from gallery import search_quality

    WORK.mkdir(parents=True, exist_ok=True)
    cache_dir, _ = _dirs()
    names, _ = evaluation.load_split(DATA, "dev")
    model_dir = Path(os.environ.get("MODEL_DIR", settings.IMAGESEARCH_MODEL_DIR))
    captioner = ImageCaptioner.from_dirs(model_dir, settings.IMAGESEARCH_FEATURE_DIR, batch_size=32)
    desc = search_quality.describe_cached(captioner, names, cache_dir)
    with open(WORK / "dev_descriptions.pkl", "wb") as fh:
        pickle.dump({n: vars(d) for n, d in desc.items()}, fh, protocol=4)
    print("descriptions", len(desc), captioner.version)


def load_split(split):
    with open(WORK / f"{split}.pkl", "rb") as fh:
        out = pickle.load(fh)
    classes = WORK / f"{split}_classes.npy"
    out["classes"] = np.load(classes) if classes.is_file() else None
    return out


def load_descriptions(dev=None):
    """Dev descriptions; with ``dev`` (load_split("dev")) object labels filled from its class probabilities."""
    with open(WORK / "dev_descriptions.pkl", "rb") as fh:
        desc = pickle.load(fh)
    if dev is not None:
        from captioning.objects import default_words

        for n, labels in zip(dev["names"], default_words().ranked(dev["classes"])):
            desc[n]["objects"] = labels
    return desc


# ------------------------------------------------------------------------------------ fast harness
class FastHarness:
    """The harness's sentence and word queries over documents given as lists of Fields."""

    def __init__(self, refs: dict[str, list[str]]):
        setup()
        from gallery import search_quality
        from searchindex.query import parse_query

        self.names = list(refs)
        self.refs = refs
        self.words = search_quality.word_queries(refs)
        self.sentence_q = [parse_query(refs[n][0]).frequencies() for n in self.names]
        self.word_q = [parse_query(w).frequencies() for w, _ in self.words]
        pos = {n: i for i, n in enumerate(self.names)}
        self.word_rel = [np.array(sorted(pos[n] for n in rel)) for _, rel in self.words]

    def evaluate(self, documents: list, depth: int = 100) -> dict:
        from searchindex.analysis import weighted_terms

        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        for i, doc in enumerate(documents):
            for term, (tf, _) in weighted_terms(doc).items():
                rows.append(i)
                cols.append(vocab.setdefault(term, len(vocab)))
                vals.append(tf)
        n = len(documents)
        tf = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab)), dtype=np.float64)
        df = np.bincount(cols, minlength=len(vocab))
        idf = np.log((1 + n) / (1 + df)) + 1
        w = tf @ sp.diags(idf)
        norms = np.sqrt(np.asarray(w.multiply(w).sum(1)).ravel())
        w = sp.diags(1 / np.where(norms > 0, norms, 1)) @ w

        def ranked(query: dict) -> np.ndarray:
            terms = [(vocab[t], f * idf[vocab[t]]) for t, f in query.items() if t in vocab]
            if not terms:
                return np.array([], dtype=int)
            q = np.zeros(len(vocab))
            for j, v in terms:
                q[j] += v
            qn = q / np.linalg.norm(q)
            scores = w @ qn
            hit = np.flatnonzero(scores > 0)
            s = np.round(scores[hit], 11)
            order = np.lexsort((hit, -s))[:depth]
            return hit[order]

        ranks = []
        for i, q in enumerate(self.sentence_q):
            r = ranked(q)
            found = np.flatnonzero(r == i)
            ranks.append(found[0] + 1 if len(found) else math.inf)
        ranks = np.array(ranks, dtype=float)
        aps, p10 = [], []
        for q, rel in zip(self.word_q, self.word_rel):
            r = ranked(q)
            good = np.isin(r, rel)
            hits = np.cumsum(good)
            aps.append(float((hits / np.arange(1, len(r) + 1))[good].sum()) / min(len(rel), depth))
            p10.append(good[:10].sum() / 10)
        return {
            "R@1": round(100 * float(np.mean(ranks <= 1)), 2),
            "R@5": round(100 * float(np.mean(ranks <= 5)), 2),
            "R@10": round(100 * float(np.mean(ranks <= 10)), 2),
            "MRR": round(100 * float(np.mean(1.0 / ranks)), 2),
            "mAP": round(100 * float(np.mean(aps)), 2),
            "P@10": round(100 * float(np.mean(p10)), 2),
        }


def documents(names, descriptions, weights, concepts=None):
    """Fields per photo via the product's document_fields; ``concepts`` (name -> [(word, p)]) replaces the captioner's."""
    from gallery.descriptions import document_fields

    out = []
    for n in names:
        d = descriptions[n]
        out.append(document_fields(
            d["caption"], alternatives=d["alternatives"], concepts=d["concepts"] if concepts is None else concepts[n],
            objects=d["objects"], weights=weights,
        ))
    return out


def check():
    """The fast scorer against the harness's evaluate_design on two designs."""
    setup()
    from dataclasses import replace

    from gallery import search_quality
    from gallery.descriptions import SearchWeights

    dev = load_split("dev")
    refs = dev["refs"]
    desc = load_descriptions(dev if os.environ.get("OBJECTS") else None)
    fast = FastHarness(refs)
    base = SearchWeights()
    for weights in (base, replace(base, alternatives=0.5, concepts=8.0, concept_min_probability=0.02, objects=1.0, object_min_probability=0.1)):
        slow_desc = {n: search_quality.PhotoDescription(**desc[n]) for n in fast.names}
        slow = search_quality.evaluate_design(slow_desc, refs, weights, words=fast.words)
        mine = fast.evaluate(documents(fast.names, desc, weights))
        print("harness", slow["sentence"], slow["word"])
        print("fast   ", mine)


# ------------------------------------------------------------------------------------ heads
def caption_keys(captions):
    """Per caption, the set of index terms it uses (the concept keys)."""
    from searchindex.analysis import tokens

    return [{t for _, t, _, _ in tokens(c) if t} for c in captions]


def targets(refs: dict, names, vocabulary, kind: str = "any") -> np.ndarray:
    """(n, K) targets: any = some caption uses the word; soft = share of captions using it; two = at least 2 of them."""
    index = {k: j for j, k in enumerate(vocabulary)}
    y = np.zeros((len(names), len(vocabulary)), np.float32)
    for i, n in enumerate(names):
        counts = Counter(k for keys in caption_keys(refs[n]) for k in keys)
        total = len(refs[n])
        for k, c in counts.items():
            if k in index:
                y[i, index[k]] = {"any": 1.0, "soft": c / total, "two": float(c >= 2)}[kind]
    return y


def vocabulary(refs: dict, names, min_images: int = 10, min_captions: int = 1):
    """Keys used (by >= min_captions captions) for at least ``min_images`` images, most frequent first; and display forms."""
    from searchindex.analysis import tokens

    counts, forms = Counter(), {}
    for n in names:
        per = Counter()
        for c in refs[n]:
            seen = set()
            for surface, t, _, _ in tokens(c):
                if t:
                    forms.setdefault(t, Counter())[surface.lower()] += 1
                    seen.add(t)
            per.update(seen)
        counts.update(k for k, c in per.items() if c >= min_captions)
    keys = sorted((k for k, c in counts.items() if c >= min_images), key=lambda k: (-counts[k], k))
    return keys, [forms[k].most_common(1)[0][0] for k in keys]


def train_head(x, y, *, hidden=512, dropout=0.5, input_dropout=0.2, l2=0.0, epochs=40, batch_size=64, lr=1e-3,
               patience=4, seed=1234, held_share=0.1, calibrate=True, verbose=0, skip=False):
    """A Keras head like captioning.concepts.train_concept_head (hidden=0: logistic); returns predict(x) -> probabilities."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_held = max(1, int(len(x) * held_share))
    held, train = order[:n_held], order[n_held:]
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dropout(input_dropout)(inputs) if input_dropout else inputs
    if hidden:
        h = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=reg)(h)
        h = keras.layers.Dropout(dropout)(h) if dropout else h
    out = keras.layers.Dense(y.shape[1], kernel_regularizer=reg)(h)
    if skip and hidden:  # wide & deep: a linear path from the inputs beside the hidden layer
        linear = keras.layers.Dense(y.shape[1], use_bias=False)(keras.layers.Dropout(input_dropout)(inputs) if input_dropout else inputs)
        out = keras.layers.Add()([out, linear])
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True, monitor="val_loss")
    hist = model.fit(x[train], y[train], validation_data=(x[held], y[held]), epochs=epochs, batch_size=batch_size,
                     callbacks=[stop], verbose=verbose, shuffle=True)
    temperature = 1.0
    if calibrate:
        from captioning.concepts import fit_temperature

        temperature = fit_temperature(model.predict(x[held], verbose=0, batch_size=1024), y[held])
    info = {"epochs": len(hist.history["val_loss"]), "best": int(np.argmin(hist.history["val_loss"])) + 1,
            "val": round(float(min(hist.history["val_loss"])), 5), "T": round(temperature, 3)}

    def predict(z):
        logits = model.predict(z, verbose=0, batch_size=1024) / temperature
        return 1 / (1 + np.exp(-logits))

    return predict, info


def ranked_concepts(names, words, probabilities, *, top_k=100, floor=0.0, transform=None):
    """name -> [(word, weight)] most probable first, like ConceptHead.ranked; ``transform`` maps p to the weight."""
    out = {}
    for n, row in zip(names, probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        out[n] = [(words[j], float(row[j] if transform is None else transform(row[j], j))) for j in order if row[j] >= floor]
    return out


if __name__ == "__main__":
    {"prep": lambda: prep(sys.argv[2]), "classes": lambda: prep_classes(sys.argv[2]), "descriptions": prep_descriptions, "check": check}[sys.argv[1]]()
