"""Public interface of the search index: documents (an integer id and weighted text fields), TF-IDF cosine ranking.

A document is a text, or a sequence of Fields (text, weight): the weighted term frequency of a
term is the sum of the weights of its occurrences (analysis.weighted_terms). Queries are typed
text (searchindex.query syntax) or, to find documents like a given one, weighted fields too.

Writes go to PostgreSQL, each in one transaction that first locks the single IndexState row: that
serialises writers (document frequencies stay exact under concurrent workers) and numbers every
change in commit order. Searches run in memory (searchindex.engine) and check that version first.

Ranking is scikit-learn's TfidfTransformer(smooth_idf=True, norm="l2", sublinear_tf=False) on the
weighted counts: idf = ln((1+n)/(1+df)) + 1, tf = weighted count, L2-normalised document and
query vectors, score = cosine (details in searchindex.engine and docs/search.md).

Nothing here raises for a bad query: search() returns empty results with a message instead. Only
programming errors raise (rebuild() with a document id twice raises ValueError), and database
errors pass through.

Callers that hold other row locks should index last in their transaction: the IndexState lock is
held until commit.
"""

import math
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np

from django.core.management.color import no_style
from django.db import connection, transaction
from django.db.models import Count, F, Sum

from imagesearch.bulk import BulkWriter, PackedValues

from . import engine
from .analysis import (
    Field,
    analyze,
    analyze_with_positions,
    as_fields,
    highlight_terms,
    normalize_word,
    tokens,
    weighted_postings,
    weighted_terms,
)
from .models import STORED_POSTINGS, TERM_ID, Document, IndexChange, IndexState, Term
from .query import Interpretation, parse_fields, parse_query

__all__ = [
    "Field",
    "Hit",
    "Interpretation",
    "MemoryIndex",
    "SearchResults",
    "analyze",
    "analyze_with_positions",
    "as_fields",
    "delete_document",
    "delete_documents",
    "highlight_terms",
    "index_document",
    "index_documents",
    "index_stats",
    "normalize_word",
    "rebuild",
    "search",
    "tokens",
    "weighted_terms",
]

REBUILD_BATCH = 5_000  # documents per COPY during rebuild (about 40 MB of COPY text for rich photos)
PACKED = tuple(name for name, _ in STORED_POSTINGS)
DOCUMENT_COLUMNS = ("doc_id", "length", *PACKED)
PRUNE_EVERY = 1_000  # versions between prunings of the change log
KEEP_CHANGES = 100_000  # change-log rows kept; a process further behind reloads everything
MAX_PER_PAGE = 1_000


@dataclass(frozen=True)
class Hit:
    doc_id: int
    score: float
    matched_terms: list[str]  # index terms (stems) of the query found in the document; see highlight_terms


@dataclass
class SearchResults:
    hits: list[Hit]
    total: int
    page: int
    per_page: int
    num_pages: int
    interpretation: Interpretation = field(default_factory=Interpretation)
    message: str | None = None  # why the query could not be searched; None when it was


def _lock_state() -> IndexState:
    """Lock the state row (creating it on first use); every writer takes this lock first."""
    state = IndexState.objects.select_for_update().filter(pk=1).first()
    if state is None:
        IndexState.objects.bulk_create([IndexState(pk=1, epoch=uuid.uuid4().hex)], ignore_conflicts=True)
        state = IndexState.objects.select_for_update().get(pk=1)
    return state


def _record_changes(state: IndexState, doc_ids: list[int]) -> None:
    """Give each change the next version; searches fetch the documents changed since theirs."""
    first = state.version + 1
    state.version += len(doc_ids)
    IndexChange.objects.bulk_create([IndexChange(version=first + i, doc_id=doc_id) for i, doc_id in enumerate(doc_ids)])
    crossed_prune_mark = state.version // PRUNE_EVERY > (first - 1) // PRUNE_EVERY
    if crossed_prune_mark and state.version - KEEP_CHANGES > state.log_floor:
        state.log_floor = state.version - KEEP_CHANGES
        IndexChange.objects.filter(version__lte=state.log_floor).delete()
    state.save(update_fields=["version", "log_floor"])


def _packed_documents(postings, ids: dict) -> tuple[np.ndarray, np.ndarray, list[PackedValues]]:
    """Analysed documents (weighted_postings) as Document rows, terms numbered by ids: each
    document's length, every posting's term id, and the packed columns (PACKED) of every row.

    Each column is packed for all documents at once: nothing per document or per posting.
    """
    term_ids = np.array([ids[term] for term in postings.vocabulary], dtype=TERM_ID)[postings.term]
    term_ends = np.cumsum(postings.per_document)
    position_ends = np.concatenate(([0], np.cumsum(postings.position_count)))[term_ends]
    columns = [
        PackedValues(values.astype(dtype).tobytes(), ends * dtype.itemsize)
        for values, (_, dtype), ends in zip((term_ids, postings.tf, postings.position_count, postings.positions),
                                            STORED_POSTINGS, (term_ends, term_ends, term_ends, position_ends))
    ]
    return np.diff(position_ends, prepend=0), term_ids, columns


def _stored_term_ids(packed) -> list[int]:
    return np.frombuffer(packed, dtype=TERM_ID).tolist()


def index_document(doc_id: int, document) -> None:
    """Index a document (a text or a sequence of Fields), replacing any earlier version, in one transaction."""
    index_documents([(doc_id, document)])


def index_documents(documents: Iterable[tuple[int, object]]) -> None:
    """Index (doc_id, text or Fields) documents, replacing earlier versions, in one transaction.

    A batch costs a fixed handful of statements however many documents it holds (a captioning
    worker indexes a whole batch of photos at once; per document, the statements cost more than
    the model). A doc_id given twice raises ValueError and changes nothing.
    """
    documents = list(documents)
    doc_ids = [int(doc_id) for doc_id, _ in documents]
    if len(set(doc_ids)) < len(doc_ids):
        twice = next(doc_id for doc_id, count in Counter(doc_ids).items() if count > 1)
        raise ValueError(f"Document {twice} appears twice in one index_documents call.")
    if not doc_ids:
        return
    postings = weighted_postings(document for _, document in documents)
    with transaction.atomic():
        state = _lock_state()
        old: dict[int, set[int]] = {doc_id: set() for doc_id in doc_ids}
        for doc_id, term_ids in Document.objects.filter(doc_id__in=doc_ids).values_list("doc_id", "term_ids"):
            old[doc_id] = set(_stored_term_ids(term_ids))
        ids = dict(Term.objects.filter(text__in=postings.vocabulary).values_list("text", "id"))
        missing = [term for term in postings.vocabulary if term not in ids]
        if missing:
            Term.objects.bulk_create([Term(text=term) for term in missing], ignore_conflicts=True)
            ids.update(Term.objects.filter(text__in=missing).values_list("text", "id"))
        lengths, term_ids, columns = _packed_documents(postings, ids)
        rows = zip(doc_ids, lengths.tolist(), *(column.values() for column in columns))
        Document.objects.bulk_create([Document(**dict(zip(DOCUMENT_COLUMNS, row))) for row in rows],
                                     update_conflicts=True, unique_fields=["doc_id"], update_fields=["length", *PACKED])
        # Each term's document frequency moves by the documents that gained it less those that lost it.
        df_change: Counter[int] = Counter()
        ends = np.cumsum(postings.per_document).tolist()
        term_ids = term_ids.tolist()
        for doc_id, end, count in zip(doc_ids, ends, postings.per_document.tolist()):
            new = set(term_ids[end - count : end])
            df_change.update(new - old[doc_id])
            df_change.subtract(old[doc_id] - new)
        _change_dfs(df_change)
        _record_changes(state, doc_ids)


def _change_dfs(df_change: Counter) -> None:
    """Move the document frequencies of terms (by id) by their changes (one UPDATE per distinct change); drop terms left in no document."""
    by_change: dict[int, list[int]] = {}
    for term_id, change in df_change.items():
        if change:
            by_change.setdefault(change, []).append(term_id)
    for change, term_ids in by_change.items():
        Term.objects.filter(id__in=term_ids).update(df=F("df") + change)
    lost = [term_id for term_id, change in df_change.items() if change < 0]
    if lost:
        Term.objects.filter(id__in=lost, df=0).delete()


def delete_document(doc_id: int) -> None:
    """Remove a document from the index; nothing happens when it is not there."""
    delete_documents([doc_id])


def delete_documents(doc_ids: Iterable[int]) -> None:
    """Remove documents from the index in one transaction; those not there are ignored."""
    doc_ids = sorted({int(doc_id) for doc_id in doc_ids})
    if not doc_ids:
        return
    with transaction.atomic():
        state = _lock_state()
        stored = list(Document.objects.filter(doc_id__in=doc_ids).values_list("doc_id", "term_ids"))
        if not stored:
            return
        present = [doc_id for doc_id, _ in stored]
        Document.objects.filter(doc_id__in=present).delete()
        lost = Counter(chain.from_iterable(_stored_term_ids(term_ids) for _, term_ids in stored))
        _change_dfs(Counter({term_id: -count for term_id, count in lost.items()}))
        _record_changes(state, present)


def rebuild(documents: Iterable[tuple[int, object]], progress=None) -> int:
    """Replace the whole index with these (doc_id, text or Fields) documents; returns how many were indexed.

    One transaction: searches keep seeing the old index (PostgreSQL rows, and each process's
    memory) until it commits, then reload. Writers wait for it and apply their change on top.
    progress, if given, is called with the number of documents done since its last call
    (tqdm's update fits). A doc_id given twice raises ValueError and changes nothing.
    """
    writer = BulkWriter()
    with transaction.atomic():
        try:
            count = _rebuild_rows(writer, documents, progress)
        finally:
            writer.finish()  # no COPY outlives the transaction, even when the input raised
    return count


def _rebuild_rows(writer: "BulkWriter", documents, progress) -> int:
    """rebuild()'s work inside its transaction: every row written, the state moved to a new epoch."""
    state = _lock_state()
    for model in (IndexChange, Document, Term):
        model.objects.all().delete()  # DELETE, not TRUNCATE: concurrent readers are not blocked
    term_ids: dict[str, int] = {}
    dfs = np.zeros(0, dtype=np.int64)
    count = 0
    for batch in _batches(documents, REBUILD_BATCH):
        postings = weighted_postings(document for _, document in batch)
        for term in postings.vocabulary:
            term_ids.setdefault(term, len(term_ids) + 1)
        lengths, batch_term_ids, columns = _packed_documents(postings, term_ids)
        doc_ids = np.fromiter(map(itemgetter(0), batch), dtype=np.int64, count=len(batch))
        writer.write_binary(Document, DOCUMENT_COLUMNS, (doc_ids, lengths.astype(np.int32), *columns))
        dfs = np.concatenate((dfs, np.zeros(len(term_ids) - len(dfs), dtype=np.int64)))
        dfs += np.bincount(batch_term_ids - 1, minlength=len(term_ids))
        count += len(batch)
        if progress:
            progress(len(batch))
    dfs = dfs.tolist()
    terms = [(tid, term, dfs[tid - 1]) for term, tid in term_ids.items()]
    writer.write(Term, ("id", "text", "df"), terms, free_text=True)
    writer.finish()
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Term]):
            cursor.execute(sql)
    state.epoch = uuid.uuid4().hex
    state.version += 1
    state.log_floor = state.version
    state.save()
    return count


def _batches(documents, size: int):
    """(doc_id, document) pairs in lists of `size`, doc_ids made int; ValueError for a doc_id seen before."""
    seen: set[int] = set()
    batch = []
    for doc_id, document in documents:
        doc_id = int(doc_id)
        if doc_id in seen:
            raise ValueError(f"Document {doc_id} appears twice in the rebuild input.")
        seen.add(doc_id)
        batch.append((doc_id, document))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def search(
    query,
    *,
    page: int = 1,
    per_page: int = 20,
    min_score: float | None = None,
    exclude_ids: Collection[int] = (),
) -> SearchResults:
    """Rank documents for a query; never raises for a bad query.

    query: typed text (syntax in searchindex.query), or a sequence of Fields scored like a
    document (to find documents like one described that way). Hits are ordered by score, then
    doc_id; scores equal to 1e-12 count as equal. page is clamped to [1, num_pages].
    """
    return _search(engine.cache.view, query, page, per_page, min_score, exclude_ids)


class MemoryIndex:
    """A read-only index of some documents held in this process only, ranked exactly like the stored one.

    For measuring search quality (many index designs tried on the same photos) without touching
    the database.
    """

    def __init__(self, documents: Iterable[tuple[int, object]]):
        grouped = {int(doc_id): weighted_terms(document) for doc_id, document in documents}
        self._view = engine.View(engine.Snapshot.from_documents(grouped), "memory", 0, {})

    def search(self, query, *, page: int = 1, per_page: int = 20, min_score=None, exclude_ids=()) -> SearchResults:
        return _search(lambda: self._view, query, page, per_page, min_score, exclude_ids)


def _search(get_view, query, page, per_page, min_score, exclude_ids) -> SearchResults:
    try:
        per_page = min(max(int(per_page), 1), MAX_PER_PAGE)
    except (TypeError, ValueError):
        per_page = 20
    try:
        page = max(int(page), 1)
    except (TypeError, ValueError):
        page = 1
    parsed = parse_query(query) if isinstance(query, str) else parse_fields(query)
    if parsed.message:
        return SearchResults([], 0, 1, per_page, 0, parsed.interpretation, parsed.message)

    view = get_view()
    weights = {}
    for term, frequency in parsed.frequencies().items():
        idf = view.idf_of(term)
        if idf is None:
            parsed.interpretation.unknown.append(parsed.surface[term])
        else:
            weights[term] = frequency * idf
    if not weights:
        return SearchResults([], 0, 1, per_page, 0, parsed.interpretation)

    ranking = view.rank(parsed, weights, min_score, exclude_ids)
    total = len(ranking.scores)
    num_pages = math.ceil(total / per_page)
    page = min(page, max(num_pages, 1))
    chosen = ranking.top((page - 1) * per_page, page * per_page)
    ids = ranking.ids(chosen)
    matched = view.matched_terms(ranking.refs[chosen], ids, list(weights))
    hits = [Hit(int(i), float(ranking.scores[c]), terms) for i, c, terms in zip(ids, chosen, matched)]
    return SearchResults(hits, total, page, per_page, num_pages, parsed.interpretation)


def index_stats(top: int = 20) -> dict:
    """Sizes of the index and its most frequent terms, for an admin page."""
    live = Term.objects.filter(df__gt=0)
    totals = live.aggregate(terms=Count("id"), postings=Sum("df"))
    state = IndexState.objects.filter(pk=1).values_list("version", flat=True).first()
    return {
        "documents": Document.objects.count(),
        "terms": totals["terms"],
        "postings": totals["postings"] or 0,
        "top_terms": list(live.order_by("-df", "text").values_list("text", "df")[:top]),
        "version": state or 0,
    }
