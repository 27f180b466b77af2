"""Ranking equals scikit-learn's TF-IDF cosine on real captions, after any sequence of changes.

These tests commit (transaction=True) so that the process's in-memory view is refreshed the way a
web process refreshes it: by version, from the change log.
"""
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from django.db import connection, transaction
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from searchindex import engine
from searchindex import index as si

pytestmark = pytest.mark.django_db(transaction=True)

CAPTIONS_FILE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k" / "captions.txt"


def read_captions(limit: int) -> list[str]:
    with CAPTIONS_FILE.open(encoding="utf-8") as handle:
        return [line.split("\t", 1)[1].strip() for line, _ in zip(handle, range(limit))]


@pytest.fixture(scope="module")
def captions():
    if not CAPTIONS_FILE.exists():
        pytest.skip(f"{CAPTIONS_FILE} is not available")
    return read_captions(3000)


def make_queries(captions, count: int, seed: int = 0) -> list[str]:
    """Words drawn from real captions: 1 to 4 per query, plus the common and the unknown."""
    rng = random.Random(seed)
    queries = ["man", "dog", "a man and a dog", "red shirt", "little girl playing", "zebra dog", "the"]
    while len(queries) < count:
        words = [w for w in rng.choice(captions).split() if w.isalpha()]
        queries.append(" ".join(rng.sample(words, min(len(words), rng.randint(1, 4)))))
    return queries


def reference(corpus: dict[int, str], queries: list[str]) -> list[dict[int, float]]:
    """scikit-learn's scores (only those above zero) per query, with the index's analyzer."""
    ids = list(corpus)
    vectorizer = TfidfVectorizer(analyzer=si.analyze, smooth_idf=True, norm="l2", sublinear_tf=False)
    matrix = vectorizer.fit_transform([corpus[i] for i in ids])
    scores = cosine_similarity(vectorizer.transform(queries), matrix)
    return [{ids[j]: row[j] for j in np.flatnonzero(row > 0)} for row in scores]


def everything(query: str) -> list:
    """Every hit of a query, page by page, in rank order."""
    hits, page = [], 1
    while True:
        results = si.search(query, page=page, per_page=500)
        hits += results.hits
        if page >= results.num_pages:
            return hits
        page += 1


def ranked(expected: dict[int, float]) -> list[int]:
    return sorted(expected, key=lambda i: (-round(expected[i], 12), i))


def assert_matches_reference(corpus, queries, top: int = 10):
    for query, expected in zip(queries, reference(corpus, queries)):
        hits = everything(query)
        got = {hit.doc_id: hit.score for hit in hits}
        assert got.keys() == expected.keys(), query
        worst = max((abs(got[i] - expected[i]) for i in got), default=0.0)
        assert worst < 1e-6, (query, worst)
        assert [hit.doc_id for hit in hits[:top]] == ranked(expected)[:top], query


def test_scores_and_top10_equal_scikit_learn_on_real_captions(captions):
    corpus = dict(enumerate(captions[:2500], start=1))
    si.rebuild(corpus.items())
    assert_matches_reference(corpus, make_queries(captions, 200))


def assert_min_score_cuts_like_reference(corpus, queries):
    """min_score halfway between two distinct reference scores keeps exactly the documents above it."""
    for query, expected in zip(queries, reference(corpus, queries)):
        scores = sorted(set(np.round(list(expected.values()), 9)), reverse=True)
        if len(scores) > 3:
            cut = (scores[2] + scores[3]) / 2
            assert si.search(query, min_score=cut).total == sum(s > cut for s in expected.values()), query


@pytest.mark.parametrize("mode", ["overlay", "reload", "pruned-log", "lagging-norms", "settled-norms"])
def test_any_sequence_of_changes_ranks_like_a_fresh_build(captions, monkeypatch, mode):
    if mode in ("lagging-norms", "settled-norms"):  # every moved term lags as long as it may
        monkeypatch.setattr(engine, "LAG_MIN_POSTINGS", 0)
        monkeypatch.setattr(engine, "LAG_SLACK", 0.5)
    if mode == "settled-norms":  # ... and every search catches the norms up instead of norming a few
        monkeypatch.setattr(engine, "SETTLE_CONTENDERS", 0)
    if mode == "reload":  # a fresh snapshot is loaded in the background at almost every refresh
        monkeypatch.setattr(engine, "OVERLAY_MIN", 5)
        monkeypatch.setattr(engine, "OVERLAY_FRACTION", 0.0)
    if mode == "pruned-log":  # searches fall behind the kept change log and must reload
        monkeypatch.setattr(si, "PRUNE_EVERY", 3)
        monkeypatch.setattr(si, "KEEP_CHANGES", 2)
    rng = random.Random(1)
    corpus = dict(enumerate(captions[:500], start=1))
    si.rebuild(corpus.items())
    queries = make_queries(captions, 40, seed=2)
    snapshots = {}  # kept alive, so that ids stay distinct
    for step in range(160):
        doc_id = rng.randint(1, 600)
        if rng.random() < 0.3:
            si.delete_document(doc_id)
            corpus.pop(doc_id, None)
        else:
            corpus[doc_id] = rng.choice(captions)
            si.index_document(doc_id, corpus[doc_id])
        if step % 20 == 0:
            si.search(rng.choice(queries))  # refresh the process's view part-way
            loader = engine.cache._loader
            if loader is not None and step % 40 == 0:
                loader.join()  # swapped in; let the other loads overlap later writes
            snapshots[id(engine.cache._view.snap)] = engine.cache._view.snap
    assert len(snapshots) > (2 if mode == "reload" else 0)
    loader = engine.cache._loader
    if loader is not None:
        loader.join()  # its connection closes before the test database is flushed
    assert_matches_reference(corpus, queries)
    assert_min_score_cuts_like_reference(corpus, queries)
    if mode == "lagging-norms":
        assert engine.cache._view.norms.slack > 0
    before = [[(h.doc_id, h.score) for h in everything(q)] for q in queries]
    si.rebuild(corpus.items())
    after = [[(h.doc_id, h.score) for h in everything(q)] for q in queries]
    for old, new in zip(before, after):
        assert [i for i, _ in old] == [i for i, _ in new]
        assert np.allclose([s for _, s in old], [s for _, s in new], rtol=0, atol=1e-9)


def test_searches_see_the_old_index_until_a_rebuild_commits(captions, monkeypatch):
    si.rebuild([(1, "a dog on the beach"), (2, "a cat on a sofa")])
    assert [h.doc_id for h in si.search("dog").hits] == [1]
    monkeypatch.setattr(si, "REBUILD_BATCH", 1)
    seen = []

    def search_elsewhere(_done):
        def run():
            seen.append([h.doc_id for h in si.search("dog").hits])  # this process's warm view
            engine.cache.clear()
            seen.append([h.doc_id for h in si.search("dog").hits])  # reloaded from PostgreSQL
            connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    si.rebuild([(10, "a dog in the snow"), (11, "a dog and a cat")], progress=search_elsewhere)
    assert seen and all(found == [1] for found in seen)
    assert sorted(h.doc_id for h in si.search("dog").hits) == [10, 11]


def test_a_search_inside_a_writing_transaction_is_not_cached_past_a_rollback():
    si.rebuild([(1, "a dog on the beach")])
    assert [h.doc_id for h in si.search("dog").hits] == [1]
    with pytest.raises(RuntimeError), transaction.atomic():
        si.index_document(2, "a dog in the snow")
        assert [h.doc_id for h in si.search("snow").hits] == [2]  # the transaction sees its own write
        raise RuntimeError
    si.index_document(3, "a cat on a sofa")  # commits the version number the rolled-back write had
    assert si.search("snow").hits == [] and [h.doc_id for h in si.search("cat").hits] == [3]


def weighted_corpus(captions, count: int, seed: int) -> dict[int, list[si.Field]]:
    """Photo-like weighted documents: a caption, two alternatives at 0.4, tag words at a probability."""
    rng = random.Random(seed)
    corpus = {}
    for doc_id in range(1, count + 1):
        fields = [si.Field(rng.choice(captions), 1.0)]
        fields += [si.Field(rng.choice(captions), 0.4) for _ in range(2)]
        words = [w for w in rng.choice(captions).split() if w.isalpha()]
        fields += [si.Field(word, round(rng.uniform(0.05, 1.0), 6)) for word in rng.sample(words, min(4, len(words)))]
        corpus[doc_id] = fields
    return corpus


def weighted_counts(documents, vocabulary: dict[str, int]):
    """The documents' weighted term counts as a CSR matrix; new terms are added to `vocabulary`."""
    from scipy.sparse import csr_matrix

    rows, cols, values = [], [], []
    for row, document in enumerate(documents):
        for field in si.as_fields(document):
            for term in si.analyze(field.text):
                rows.append(row)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                values.append(field.weight)
    return csr_matrix((values, (rows, cols)), shape=(len(documents), len(vocabulary)))  # duplicates are summed


def weighted_reference(corpus: dict, queries: list) -> list[dict[int, float]]:
    """scikit-learn's TfidfTransformer on the same weighted counts, cosine per query."""
    from sklearn.feature_extraction.text import TfidfTransformer

    ids = list(corpus)
    vocabulary: dict[str, int] = {}
    counts = weighted_counts([corpus[i] for i in ids], vocabulary)
    width = len(vocabulary)
    transformer = TfidfTransformer(smooth_idf=True, norm="l2", sublinear_tf=False).fit(counts)
    query_counts = weighted_counts(queries, dict(vocabulary))[:, :width]  # unknown terms drop out
    scores = cosine_similarity(transformer.transform(query_counts), transformer.transform(counts))
    return [{ids[j]: row[j] for j in np.flatnonzero(row > 1e-15)} for row in scores]


def test_weighted_documents_and_queries_score_like_scikit_learns_transformer(captions):
    corpus = weighted_corpus(captions, 800, seed=3)
    si.rebuild(corpus.items())
    queries = make_queries(captions, 60, seed=4) + [corpus[5], corpus[77][:3], [si.Field("dog", 0.3), si.Field("beach", 2.5)]]
    for changed in (False, True):
        if changed:  # the same through the overlay of changed documents
            for doc_id in (5, 300, 801):
                corpus[doc_id] = weighted_corpus(captions, 1, seed=doc_id)[1]
                si.index_document(doc_id, corpus[doc_id])
        for query, expected in zip(queries, weighted_reference(corpus, queries)):
            hits = everything(query)
            got = {hit.doc_id: hit.score for hit in hits}
            assert got.keys() == expected.keys(), query
            assert max((abs(got[i] - expected[i]) for i in got), default=0.0) < 1e-6, query
            assert [hit.doc_id for hit in hits[:10]] == ranked(expected)[:10], query


def test_a_phrase_never_matches_across_two_fields():
    si.index_document(1, [si.Field("a man in a red", 1.0), si.Field("shirt", 0.9)])
    si.index_document(2, [si.Field("a man in a red shirt", 0.5)])
    assert [h.doc_id for h in si.search('"red shirt"').hits] == [2]
    assert sorted(h.doc_id for h in si.search("red shirt").hits) == [1, 2]


def test_a_field_query_finds_the_document_it_describes_first():
    si.rebuild([
        (1, [si.Field("a dog runs on the beach", 1.0), si.Field("dog", 0.9), si.Field("sand", 0.6)]),
        (2, [si.Field("a dog runs on the grass", 1.0), si.Field("dog", 0.8), si.Field("grass", 0.7)]),
        (3, [si.Field("a man rides a bicycle", 1.0), si.Field("bicycle", 0.9)]),
    ])
    hits = si.search([si.Field("a dog runs on the beach", 1.0), si.Field("sand", 0.5)]).hits
    assert [h.doc_id for h in hits] == [1, 2]
    assert si.search([si.Field("", 1.0)]).message


def test_a_memory_index_ranks_exactly_like_the_stored_one(captions):
    corpus = weighted_corpus(captions, 300, seed=9)
    si.rebuild(corpus.items())
    memory = si.MemoryIndex(corpus.items())
    for query in make_queries(captions, 30, seed=10) + [corpus[7], '"red shirt"', "dog -beach"]:
        stored, held = si.search(query, per_page=50), memory.search(query, per_page=50)
        assert [h.doc_id for h in held.hits] == [h.doc_id for h in stored.hits], query
        assert np.allclose([h.score for h in held.hits], [h.score for h in stored.hits], rtol=0, atol=1e-12)
        assert [h.matched_terms for h in held.hits] == [h.matched_terms for h in stored.hits]
