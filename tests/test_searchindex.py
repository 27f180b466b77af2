"""The search index: analysis, query syntax, messages, pagination, writes and index statistics."""
import math
import random
from collections import Counter

import numpy as np
import pytest
from django.db import connection
from psycopg2 import DatabaseError

from searchindex import index as si
from searchindex.analysis import FIELD_GAP, weighted_postings
from searchindex.engine import fetch_documents
from searchindex.models import Document, IndexState, Term

pytestmark = pytest.mark.django_db

DOCS = {
    1: "A black dog runs on the beach.",
    2: "A man in a red shirt climbs a rock.",
    3: "Two dogs play with a red ball in the grass.",
    4: "A man is wearing a red and white shirt.",
    5: "A little girl in a pink dress runs through the sprinkler.",
    6: "The dog is running after the man on a bike.",
}


@pytest.fixture
def docs():
    si.rebuild(DOCS.items())
    return DOCS


def ids(results):
    return [hit.doc_id for hit in results.hits]


def test_analyzer_lowercases_drops_stop_words_and_stems():
    assert si.analyze("The Dogs are RUNNING on the beaches") == ["dog", "run", "beach"]
    assert si.analyze("A man's T-shirt") == ["man", "t", "shirt"]


def test_analyzer_is_unicode_aware():
    assert si.analyze("Ein Mädchen in Zürich ＤＯＧＳ") == ["ein", "mädchen", "zürich", "dog"]
    assert si.analyze("café") == si.analyze("cafe\u0301")  # NFC and NFD spellings are one term


def test_positions_count_stop_words():
    assert si.analyze_with_positions("man in a red shirt") == [("man", 0), ("red", 3), ("shirt", 4)]


def field_terms_one_by_one(fields) -> dict:
    """weighted_terms as its docstring defines it, from analyze_with_positions field by field."""
    terms, offset = {}, 0
    for text, weight in fields:
        if weight > 0 and math.isfinite(weight):
            for term, position in si.analyze_with_positions(text):
                tf, positions = terms.get(term, (0.0, []))
                terms[term] = (tf + weight, positions + [offset + position])
            offset += len(si.tokens(text)) + FIELD_GAP
    return terms


def test_batch_analysis_matches_field_by_field_analysis():
    """Plain ASCII texts are split apart from the others, and short texts kept between batches."""
    captions = ["a dog runs on the beach", "A man's dog don't swim", "Zwei Hunde im Schnee, café", "x\0y dog",
                "the_cat 42nd street -- again", "ＤＯＧＳ and dogs", "", "a" * 80 + " dog"]
    words = ["dog", "Beach", "snow", "don't", "été", "red shirt"]
    rng = random.Random(5)
    documents = [[(rng.choice(captions), rng.choice([1.0, 0.5])), (rng.choice(captions), 0.0)]
                 + [(rng.choice(words), rng.random()) for _ in range(rng.randrange(4))] for _ in range(60)]
    for _ in range(2):  # the second time the short texts are known
        postings = weighted_postings([[si.Field(*field) for field in document] for document in documents])
        ends = np.cumsum(postings.per_document)
        position_ends = np.concatenate(([0], np.cumsum(postings.position_count)))
        for document, end, count in zip(documents, ends, postings.per_document):
            found = {postings.vocabulary[postings.term[k]]:
                     (postings.tf[k], postings.positions[position_ends[k] : position_ends[k + 1]].tolist())
                     for k in range(end - count, end)}
            expected = field_terms_one_by_one(document)
            assert found == expected and list(found) == list(expected)


def test_highlight_marks_words_whose_stem_matched():
    pieces = si.highlight_terms("Dogs running <b>", ["dog", "run"])
    assert pieces == [("Dogs", True), (" ", False), ("running", True), (" <b>", False)]
    assert "".join(piece for piece, _ in pieces) == "Dogs running <b>"


def test_free_text_matches_any_term_ranked(docs):
    results = si.search("red dog")
    assert set(ids(results)) == {1, 2, 3, 4, 6}
    assert results.hits[0].doc_id == 3  # the only caption with both words
    assert results.hits[0].matched_terms == ["red", "dog"]
    assert results.total == 5 and results.message is None
    assert [h.score for h in results.hits] == sorted((h.score for h in results.hits), reverse=True)


def test_phrase_must_occur_with_its_word_distances(docs):
    assert ids(si.search('"red shirt"')) == [2]
    assert ids(si.search('"man in a red shirt"')) == [2]
    # Stop words keep their slot: any two of them between "man" and "bike", but not one.
    assert ids(si.search('"man on a bike"')) == ids(si.search('"man at the bike"')) == [6]
    assert ids(si.search('"man with bike"')) == []
    assert ids(si.search('"shirt red"')) == []
    results = si.search('man "red shirt"')
    assert ids(results) == [2] and results.interpretation.phrases == ["red shirt"]


def test_exclusion_of_words_and_phrases(docs):
    results = si.search("red -ball")
    assert set(ids(results)) == {2, 4}
    assert results.interpretation.excluded == ["ball"]
    assert set(ids(si.search('man -"red shirt"'))) == {4, 6}


def test_interpretation_lists_words_as_typed(docs):
    results = si.search('Running the zebras "red shirt" -ball')
    interp = results.interpretation
    assert interp.terms == ["Running", "zebras", "red", "shirt"]
    assert interp.unknown == ["zebras"] and interp.ignored == ["the"]


def test_interpretation_lists_each_left_out_word_once(docs):
    assert si.search("a dog of a man and A ball").interpretation.ignored == ["a", "of", "and"]


def test_pagination_covers_every_hit_once(docs):
    pages = [si.search("dog man red", page=p, per_page=2) for p in (1, 2, 3)]
    assert [r.num_pages for r in pages] == [3, 3, 3]
    seen = [i for r in pages for i in ids(r)]
    assert sorted(seen) == sorted(ids(si.search("dog man red", per_page=50)))
    assert len(seen) == len(set(seen)) == pages[0].total
    assert si.search("dog man red", page=99, per_page=2).page == 3
    assert si.search("dog", page="not a number").page == 1


def test_min_score_and_exclude_ids(docs):
    everything = si.search("red dog")
    cut = everything.hits[1].score
    assert ids(si.search("red dog", min_score=cut)) == ids(everything)[:2]
    assert 3 not in ids(si.search("red dog", exclude_ids={3, 999}))


@pytest.mark.parametrize(
    "query, words",
    [
        ("", "Type a word"),
        ("   ", "Type a word"),
        ("the and of", "only very common words"),
        ("x" * 501, "too long"),
        (" ".join(f"w{i}" for i in range(33)), "too many words"),
        ("dog\x00\x01", "binary"),
        ("caf\ufffd", "binary"),
        (b"dog", "must be text"),
        (None, "must be text"),
        ("-dog -ball", "excluding words alone"),
        ("?! ...", "no words"),
    ],
)
def test_unsearchable_queries_give_a_message_not_an_error(docs, query, words):
    results = si.search(query)
    assert results.hits == [] and results.total == 0 and results.num_pages == 0
    assert words in results.message


def test_unknown_words_give_no_results_and_no_message(docs):
    results = si.search("zebra")
    assert results.hits == [] and results.message is None and results.interpretation.unknown == ["zebra"]


def _stored_postings() -> list[tuple]:
    """Every stored posting as (doc_id, term, tf, positions), sorted."""
    documents = fetch_documents(Document.objects.values_list("doc_id", flat=True))
    return sorted((doc_id, term, tf, positions) for doc_id, doc in documents.items() for term, (tf, positions) in doc.items())


def _df_is_exact():
    containing = Counter(term for _, term, _, _ in _stored_postings())
    for term in Term.objects.all():
        assert term.df == containing[term.text] > 0, term.text


def test_reindex_replaces_and_delete_removes(docs):
    si.index_document(1, "A cat sleeps on a sofa")
    assert 1 not in ids(si.search("dog beach"))
    assert ids(si.search("cat")) == [1]
    si.delete_document(1)
    si.delete_document(1)  # absent: nothing happens
    si.delete_document(12345)
    assert ids(si.search("cat")) == []
    assert not Term.objects.filter(text__in=["cat", "beach"]).exists()
    _df_is_exact()
    assert Document.objects.count() == len(DOCS) - 1


def test_document_of_only_stop_words_counts_in_n_but_never_matches(docs):
    si.index_document(50, "the and a")
    assert Document.objects.filter(doc_id=50, length=0).exists()
    assert 50 not in ids(si.search("the dog"))


def test_rebuild_rejects_a_duplicate_id_and_keeps_the_index(docs):
    with pytest.raises(ValueError):
        si.rebuild([(7, "a cat"), (7, "a cow")])
    assert ids(si.search("cat")) == [] and set(ids(si.search("dog"))) == {1, 3, 6}


def test_rebuild_that_fails_mid_way_keeps_the_index(docs, monkeypatch):
    """Failures of the input and of a COPY in flight (run on a helper thread) both roll everything back."""
    monkeypatch.setattr(si, "REBUILD_BATCH", 2)

    def failing_input():
        yield from ((i, f"a cat number {i}") for i in range(10, 15))
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError):
        si.rebuild(failing_input())
    with pytest.raises(OverflowError):  # out of bigint's range
        si.rebuild([(1, "a cat"), (2, "a cow"), (2**70, "a cat")])
    doc_id, length, *packed = si.DOCUMENT_COLUMNS
    monkeypatch.setattr(si, "DOCUMENT_COLUMNS", (length, doc_id, *packed))  # rows only the server rejects: int8 into int4
    with pytest.raises(DatabaseError):
        si.rebuild([(1, "a cat"), (2, "a cow"), (3, "a cat")])
    assert ids(si.search("cat")) == [] and set(ids(si.search("dog"))) == {1, 3, 6}


def test_rebuild_reports_progress_and_count(docs, monkeypatch):
    monkeypatch.setattr(si, "REBUILD_BATCH", 2)
    steps = []
    assert si.rebuild(((i, f"dog number {i}") for i in range(5)), progress=steps.append) == 5
    assert sum(steps) == 5
    assert Document.objects.count() == 5 and Term.objects.get(text="dog").df == 5


def test_index_stats(docs):
    stats = si.index_stats(top=3)
    assert stats["documents"] == 6
    assert stats["postings"] == len(_stored_postings())
    assert stats["terms"] == Term.objects.count()
    assert stats["top_terms"] == [("dog", 3), ("man", 3), ("red", 3)]  # by frequency, then text
    assert stats["version"] == IndexState.objects.get().version


def test_writer_queries_use_indexes(docs):
    """The statements behind index_document and delete_document use index scans, not table scans."""
    statements = [
        "SELECT doc_id, term_ids FROM searchindex_document WHERE doc_id IN (3, 4)",
        "DELETE FROM searchindex_document WHERE doc_id = 3",
        "SELECT id FROM searchindex_term WHERE text IN ('dog', 'red')",
        "UPDATE searchindex_term SET df = df + 1 WHERE id IN (1, 2)",
        "SELECT doc_id FROM searchindex_document WHERE doc_id = 3",
        "SELECT doc_id FROM searchindex_indexchange WHERE version > 5",
        "SELECT text, df FROM searchindex_term WHERE df > 0 ORDER BY df DESC LIMIT 20",
    ]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in statements:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Index" in plan and "Seq Scan" not in plan, (sql, plan)


@pytest.mark.django_db
def test_a_batch_of_documents_is_indexed_as_one_by_one():
    """index_documents / delete_documents (one transaction per batch) leave the index as single writes would."""
    si.index_documents([(1, "a dog on a beach"), (2, "a cat on a sofa"), (3, "a dog and a cat")])
    si.index_documents([(1, "a dog in the snow"), (4, [si.Field("snow", 2.0)])])
    si.delete_documents([2, 99])
    batched = _index_rows()
    for model in (Term, Document):
        model.objects.all().delete()
    for doc_id, text in [(1, "a dog in the snow"), (3, "a dog and a cat"), (4, [si.Field("snow", 2.0)])]:
        si.index_document(doc_id, text)
    assert batched == _index_rows()
    assert [h.doc_id for h in si.search("snow").hits] == [4, 1]
    with pytest.raises(ValueError):
        si.index_documents([(5, "a"), (5, "b")])


def _index_rows():
    return (
        sorted(Term.objects.values_list("text", "df")),
        sorted(Document.objects.values_list("doc_id", "length")),
        _stored_postings(),
    )
