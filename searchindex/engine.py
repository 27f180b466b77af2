"""The in-memory side of the index: postings as NumPy arrays, scored with vectorised operations.

PostgreSQL holds the index; each process keeps a snapshot of it (compressed-sparse-row arrays of
postings, grouped by term and sorted by document) plus an overlay of the documents changed
since the snapshot was loaded. Every search reads the one IndexState row (epoch, version): an
unchanged version costs nothing more; a higher one fetches only the documents changed since
(IndexChange rows); a new epoch (rebuild) or a pruned change log takes a fresh snapshot, and an
overlay grown past OVERLAY_FRACTION of the snapshot starts taking one in the background.

Snapshots are shared through files (searchindex.snapshot_files): a process maps the newest valid
file of the current epoch that the change log still reaches and catches up through the overlay;
only when there is none does it load the postings from PostgreSQL, under a lock that makes the
machine's other processes wait for its file rather than load them too.

Weighting (scikit-learn TfidfTransformer(smooth_idf=True, norm="l2", sublinear_tf=False) on the
weighted counts; for plain texts that is TfidfVectorizer's):
    idf(t) = ln((1 + n) / (1 + df(t))) + 1          n = documents in the index
    w(t, d) = tf(t, d) * idf(t)                      tf = weighted count (searchindex.analysis.Field)
    w(t, q) = tf(t, q) * idf(t)                      query terms absent from the index dropped
    score(q, d) = sum_t w(t, q) w(t, d) / (|q| |d|)  cosine of the L2-normalised vectors
Because idf moves with every change, document norms |d| are brought up to date with the current
idf whenever the version changes (View._norms: O(documents) plus the postings of the rare terms
whose df moved; the moves of common terms, too small to matter for most documents, may lag, and
the documents whose rank they could change are normed exactly when they are ranked), so a ranking
always equals that of a from-scratch build; see docs/search.md for the cost.
"""

import io
import logging
import math
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np
from django.db import connection, transaction

from . import snapshot_files
from .models import STORED_POSTINGS, TERM_ID, Document, IndexChange, IndexState, Term, stored_postings

log = logging.getLogger(__name__)

OVERLAY_FRACTION = 0.02  # load a fresh snapshot (in the background) once this share of documents changed
OVERLAY_MIN = 2_000  # ... but never for fewer changed documents than this
_KEY_BIAS = 1 << 31  # phrase keys pack (document, position - offset + bias) into one int64
# Norms of a view may lag behind the df moves of common terms (View._norms): a term with at least
# LAG_MIN_POSTINGS postings whose move changes no norm^2 by more than LAG_SLACK (relative) is left
# for later; the few documents whose rank that could change are normed exactly at search time.
LAG_MIN_POSTINGS = 20_000
LAG_SLACK = 1e-3
SETTLE_CONTENDERS = 20_000  # more uncertain documents than this in one search: catch the norms up instead
_ROUNDING = 1e-9  # added to a slack: the decomposition's own rounding (about 1e-13) with room to spare


@dataclass(frozen=True)
class Snapshot:
    """Immutable postings arrays of the whole index at one version (build() derives the rest)."""

    terms: dict  # term text -> row in the arrays below
    doc_ids: np.ndarray  # int64 [D], ascending: local document number -> doc_id
    p_doc: np.ndarray  # int32 [P]: local document number, ascending within a term
    p_term: np.ndarray  # int32 [P]
    p_tf: np.ndarray  # float64 [P]: weighted term frequency
    pos_ptr: np.ndarray  # int64 [P+1]: positions of posting i are pos[pos_ptr[i]:pos_ptr[i+1]]
    pos: np.ndarray  # int32
    df: np.ndarray  # int64 [T]
    t_ptr: np.ndarray  # int64 [T+1]: postings of term t are [t_ptr[t], t_ptr[t+1])
    d_ptr: np.ndarray  # int64 [D+1]: postings of document d are d_post[d_ptr[d]:d_ptr[d+1]]
    d_post: np.ndarray  # int32 or int64 [P]
    # Per document, for norms in O(documents) whatever n is (see View): with b(t) = ln(1 + df(t)),
    # s0 = sum tf^2, s1 = sum tf^2 b, s2 = sum tf^2 b^2, at this snapshot's df.
    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    # A mapped file's checksums still being verified in the background (snapshot_files.read).
    check: "snapshot_files.DeferredCheck | None" = field(default=None, compare=False)

    @classmethod
    def build(cls, terms, doc_ids, p_doc, p_term, p_tf, pos_ptr, pos):
        """Derive the per-term and per-document arrays from postings sorted by (term, document)."""
        n_docs = len(doc_ids)
        df = np.bincount(p_term, minlength=len(terms)).astype(np.int64)
        per_doc = np.bincount(p_doc, minlength=n_docs)
        p_tf = np.asarray(p_tf, dtype=np.float64)
        s0, s1, s2 = _norm_sums(p_doc, p_tf, np.log1p(df)[p_term], n_docs)
        return cls(
            terms=terms, doc_ids=doc_ids, p_doc=p_doc, p_term=p_term, p_tf=p_tf, pos_ptr=pos_ptr, pos=pos, df=df,
            t_ptr=np.concatenate(([0], np.cumsum(df))),
            d_ptr=np.concatenate(([0], np.cumsum(per_doc))),
            d_post=np.argsort(p_doc, kind="stable").astype(np.int32 if len(p_doc) < 2**31 else np.int64),
            s0=s0, s1=s1, s2=s2,
        )

    @classmethod
    def from_documents(cls, documents: dict) -> "Snapshot":
        """A snapshot of {doc_id: {term: (tf, positions)}} held in memory only (no database)."""
        doc_ids = np.array(sorted(documents), dtype=np.int64)
        terms: dict[str, int] = {}
        rows = []  # (term row, local document, tf, positions)
        for local, doc_id in enumerate(doc_ids.tolist()):
            for term, (tf, positions) in documents[doc_id].items():
                rows.append((terms.setdefault(term, len(terms)), local, tf, positions))
        rows.sort(key=lambda row: (row[0], row[1]))
        counts = np.array([len(row[3]) for row in rows], dtype=np.int64)
        return cls.build(
            terms, doc_ids,
            np.array([row[1] for row in rows], dtype=np.int32), np.array([row[0] for row in rows], dtype=np.int32),
            np.array([row[2] for row in rows], dtype=np.float64), np.concatenate(([0], np.cumsum(counts))),
            np.array([p for row in rows for p in row[3]], dtype=np.int32),
        )

    @classmethod
    def empty(cls, terms=None, doc_ids=None):
        """No postings (yet): the given terms and documents, or none."""
        none32 = np.zeros(0, np.int32)
        doc_ids = np.zeros(0, np.int64) if doc_ids is None else doc_ids
        return cls.build(terms or {}, doc_ids, none32, none32, np.zeros(0), np.zeros(1, np.int64), none32)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by field name (what a snapshot file stores besides the terms)."""
        return {name: getattr(self, name) for name in SNAPSHOT_ARRAYS}

    def term_list(self) -> list[str]:
        """The terms in row order."""
        out = [""] * len(self.terms)
        for term, row in self.terms.items():
            out[row] = term
        return out

    @classmethod
    def from_file(cls, path, epoch: str, version: int, check_in_background: bool = True) -> "Snapshot":
        """The snapshot of a folder written by snapshot_files, mapped read-only (SnapshotFileError if unusable).

        The checksums of its large arrays are verified on a background thread (check_in_background,
        as every process that maps a folder it did not just write does): a mismatch discards the
        folder and makes the next search take another snapshot (Cache).
        """
        arrays, terms, check = snapshot_files.read(path, epoch, version, SNAPSHOT_ARRAYS)
        if not (check_in_background and check.arrays):
            check = None
        else:
            threading.Thread(target=check.verify, name="searchindex-snapshot-check", daemon=True).start()
        return cls(terms={term: row for row, term in enumerate(terms)}, check=check, **arrays)

    @property
    def failed_check(self) -> bool:
        """Whether the background checksum found its file corrupt."""
        return self.check is not None and self.check.failed


SNAPSHOT_ARRAYS = tuple(f.name for f in fields(Snapshot) if f.name not in ("terms", "check"))


LOAD_PAGE = 20_000  # documents per query of load_snapshot (about 90 MB of rich photos' postings)
LOAD_TRIES = 3  # reads of the postings that may straddle a commit (load_snapshot)
PACKED = tuple(name for name, _ in STORED_POSTINGS)


def _document_pages(columns: tuple[str, ...]):
    """Every Document row in doc_id order, a page (LOAD_PAGE rows) at a time: (doc_ids, number of
    postings of each, the packed columns' values joined as arrays). columns starts with term_ids.

    Read a page at a time (doc_id > the last one read), so that neither side ever holds more
    than a page of rows.
    """
    dtypes = dict(STORED_POSTINGS)
    sql = f"SELECT doc_id, {', '.join(columns)} FROM {Document._meta.db_table} WHERE doc_id > %s ORDER BY doc_id LIMIT %s"
    last = -(2**63)
    with connection.cursor() as cursor:
        while rows := _page(cursor, sql, last, len(columns)):
            page = list(zip(*rows))
            del rows
            doc_ids = np.array(page[0], dtype=np.int64)
            n_postings = np.fromiter(map(len, page[1]), dtype=np.int64, count=len(page[1])) // TERM_ID.itemsize
            yield doc_ids, n_postings, [np.frombuffer(b"".join(values), dtype=dtypes[name])
                                        for name, values in zip(columns, page[1:])]
            last = int(doc_ids[-1])


def _page(cursor, sql: str, last: int, n_columns: int) -> list:
    """The rows of one page: through COPY's binary format on PostgreSQL (bytea as it is stored:
    in a query's text results it is hex, twice the bytes to make and to decode), a query elsewhere."""
    if connection.vendor != "postgresql":
        cursor.execute(sql, [last, LOAD_PAGE])
        return cursor.fetchall()
    buffer = io.BytesIO()
    cursor.cursor.copy_expert(f"COPY ({sql % (int(last), LOAD_PAGE)}) TO STDOUT (FORMAT binary)", buffer)
    return _binary_rows(buffer.getbuffer(), n_columns)


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0"
_ROW_START = struct.Struct(">hiqi")  # number of fields, 8, doc_id, length of the first packed column
_LENGTH = struct.Struct(">i")


def _binary_rows(data: memoryview, n_columns: int) -> list[list]:
    """(doc_id, packed column, ...) rows of a binary COPY of doc_id and n_columns packed columns (none NULL)."""
    if bytes(data[:11]) != _COPY_SIGNATURE:
        raise ValueError("not the output of COPY ... (FORMAT binary)")
    pos = 19 + _LENGTH.unpack_from(data, 15)[0]  # after the header and its extension area
    end = len(data) - 2  # the trailer
    rows = []
    while pos < end:
        _, _, doc_id, size = _ROW_START.unpack_from(data, pos)
        pos += _ROW_START.size
        row = [doc_id, data[pos : pos + size]]
        pos += size
        for _ in range(n_columns - 1):
            (size,) = _LENGTH.unpack_from(data, pos)
            pos += 4
            row.append(data[pos : pos + size])
            pos += size
        rows.append(row)
    return rows


class _RowsMoved(Exception):
    """The second read of the postings found rows other than the first (a commit between them)."""


def _new_array(name: str, shape, dtype) -> np.ndarray:
    """load_snapshot's default storage: the process's own memory."""
    return np.zeros(shape, dtype=dtype)


def load_snapshot(allocate=_new_array) -> Snapshot:
    """Read every document's postings; postings of terms not (yet) seen are dropped.

    allocate(name, shape, dtype) gives the storage of each large array: the process's memory by
    default, a snapshot file's mapped pages (snapshot_files.NewFolder.allocate) so that a million
    rich photos' postings (about 7 GB) never need a second copy in memory. Two reads of the
    Document rows: the first counts, the second places each page's postings (_Placement).
    In one REPEATABLE READ transaction (_consistent_load) they read the same rows; under READ
    COMMITTED a commit between them is detected and the load starts again; whatever the rows and
    the state read before them disagree about was changed after that version, so the overlay
    replays it on the next search.
    """
    for _ in range(LOAD_TRIES - 1):
        try:
            return _load_postings(allocate)
        except _RowsMoved:
            log.info("The index changed while its postings were read; reading them again")
    return _load_postings(allocate)


def _load_postings(allocate) -> Snapshot:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, text FROM {Term._meta.db_table} WHERE df > 0 ORDER BY id")
        term_rows = cursor.fetchall()
    terms = {row[1]: i for i, row in enumerate(term_rows)}
    term_ids = np.array([row[0] for row in term_rows], dtype=np.int64)
    # Term id -> row, through a table as long as the highest id (ids are dense: one per term ever
    # created) and one more entry, -1, for the ids past it (_term_rows).
    row_of = np.full(int(term_ids.max()) + 2 if len(term_ids) else 1, -1, dtype=np.int32)
    row_of[term_ids] = np.arange(len(term_ids), dtype=np.int32)
    del term_rows, term_ids

    # First read: postings and positions per term, postings per document.
    n_terms = len(terms)
    df, term_positions = np.zeros(n_terms, np.int64), np.zeros(n_terms, np.int64)
    id_parts, count_parts = [], []
    for doc_ids, n_postings, (stored_terms, position_counts) in _document_pages(("term_ids", "position_counts")):
        rows = _term_rows(row_of, stored_terms)
        keep = rows >= 0
        df += np.bincount(rows[keep], minlength=n_terms)
        term_positions += np.bincount(rows[keep], weights=position_counts[keep], minlength=n_terms).astype(np.int64)
        id_parts.append(doc_ids)
        count_parts.append(np.bincount(np.repeat(np.arange(len(doc_ids)), n_postings)[keep], minlength=len(doc_ids)))
    doc_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    per_doc = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
    if not len(doc_ids):
        return Snapshot.empty(terms, doc_ids)

    n_postings, n_positions = int(df.sum()), int(term_positions.sum())
    t_ptr = np.concatenate(([0], np.cumsum(df)))
    snap = dict(
        terms=terms, doc_ids=doc_ids, df=df, t_ptr=t_ptr, d_ptr=np.concatenate(([0], np.cumsum(per_doc))),
        p_doc=allocate("p_doc", (n_postings,), np.int32), p_term=allocate("p_term", (n_postings,), np.int32),
        p_tf=allocate("p_tf", (n_postings,), np.float64), pos_ptr=allocate("pos_ptr", (n_postings + 1,), np.int64),
        pos=allocate("pos", (n_positions,), np.int32),
        d_post=allocate("d_post", (n_postings,), np.int32 if n_postings < 2**31 else np.int64),
        s0=np.zeros(len(doc_ids)), s1=np.zeros(len(doc_ids)), s2=np.zeros(len(doc_ids)),
    )
    for a in range(0, n_terms, 4096):  # p_term: each term's row over its postings, without a second copy
        b = min(a + 4096, n_terms)
        snap["p_term"][t_ptr[a] : t_ptr[b]] = np.repeat(np.arange(a, b, dtype=np.int32), df[a:b])
    snap["pos_ptr"][-1] = n_positions

    # Second read: each page's postings to their places, checked against the first.
    placed = _Placement(np.concatenate(([0], np.cumsum(term_positions))), t_ptr, np.log1p(df))
    first = 0
    for page_ids, n_postings, columns in _document_pages(PACKED):
        n = len(page_ids)
        if not np.array_equal(page_ids, doc_ids[first : first + n]):
            raise _RowsMoved
        placed.page(snap, first, per_doc[first : first + n], row_of, n_postings, *columns)
        first += n
    if first != len(doc_ids) or not placed.complete():
        raise _RowsMoved
    return Snapshot(**snap)


def _term_rows(row_of: np.ndarray, term_ids: np.ndarray) -> np.ndarray:
    """Each stored term id's row in the snapshot, -1 for the terms it drops (ids read as df 0, or
    created after the terms were read: past the table, they map to its last entry, -1)."""
    return row_of[np.minimum(term_ids, len(row_of) - 1)]


def _norm_sums(docs: np.ndarray, tfs: np.ndarray, b: np.ndarray, n_docs: int) -> tuple[np.ndarray, ...]:
    """Per document (docs: its local number, per posting), s0 = sum tf^2, s1 = sum tf^2 b and
    s2 = sum tf^2 b^2 (Snapshot), summed in the order the postings are given."""
    tf2 = tfs**2
    return tuple(np.bincount(docs, weights=weights, minlength=n_docs) for weights in (tf2, tf2 * b, tf2 * b * b))


class _Placement:
    """Where the next posting of each term goes in the snapshot's arrays (by term, then by
    document), while the second read of load_snapshot places the Document rows page by page."""

    def __init__(self, pos_t_ptr: np.ndarray, t_ptr: np.ndarray, b: np.ndarray):
        self.t_ptr, self.pos_t_ptr, self.b = t_ptr, pos_t_ptr, b
        self.next_posting, self.next_position = t_ptr[:-1].copy(), pos_t_ptr[:-1].copy()
        self.done_postings = 0  # postings placed so far: the next index of d_post (in document order)

    def complete(self) -> bool:
        return np.array_equal(self.next_posting, self.t_ptr[1:]) and np.array_equal(self.next_position, self.pos_t_ptr[1:])

    def page(self, snap: dict, first: int, expected_counts, row_of, n_postings, stored_terms, tfs, position_counts, positions):
        """Place one page's postings (documents first, first + 1, ... in stored order), or raise _RowsMoved."""
        n_docs, n_terms = len(n_postings), len(self.b)
        rows = _term_rows(row_of, stored_terms)
        keep = np.flatnonzero(rows >= 0)
        local = np.repeat(np.arange(n_docs, dtype=np.int32), n_postings)[keep]
        if not np.array_equal(np.bincount(local, minlength=n_docs), expected_counts):
            raise _RowsMoved
        source_start = (np.cumsum(position_counts) - position_counts)[keep]
        rows, tfs, counts = rows[keep], tfs[keep], position_counts[keep]

        # By term, documents ascending within a term (the page is in document order): the k-th
        # posting of term t in this page goes to next_posting[t] + k.
        order = np.argsort(rows.astype(np.uint16) if n_terms <= 2**16 else rows, kind="stable")  # radix sort in 16 bits
        by_term = rows[order]
        in_page = np.bincount(by_term, minlength=n_terms)
        group_start = np.cumsum(in_page) - in_page
        dest = self.next_posting[by_term] + (np.arange(len(order)) - group_start[by_term])
        sorted_counts = counts[order]
        count_start = np.cumsum(sorted_counts) - sorted_counts
        position_dest = self.next_position[by_term] + (count_start - count_start[group_start[by_term]])
        self.next_posting += in_page
        self.next_position += np.bincount(by_term, weights=sorted_counts, minlength=n_terms).astype(np.int64)
        if (self.next_posting > self.t_ptr[1:]).any() or (self.next_position > self.pos_t_ptr[1:]).any():
            raise _RowsMoved
        snap["p_doc"][dest] = local[order] + first
        snap["p_tf"][dest] = tfs[order]
        snap["pos_ptr"][dest] = position_dest
        total = int(sorted_counts.sum())
        snap["pos"][np.repeat(position_dest - count_start, sorted_counts) + np.arange(total)] = positions[
            np.repeat(source_start[order] - count_start, sorted_counts) + np.arange(total)]

        # Per document, its postings in term order (as argsort of p_doc would list them) and the
        # norm sums (summed in that order, as a bincount over the by-term arrays does).
        # (A stable sort by document of the by-term order; a radix sort while a page's documents fit in 16 bits.)
        by_doc = np.argsort(local[order].astype(np.uint16 if n_docs <= 2**16 else np.int32), kind="stable")
        snap["d_post"][self.done_postings : self.done_postings + len(dest)] = dest[by_doc]
        self.done_postings += len(dest)
        by_doc = order[by_doc]
        sums = _norm_sums(local[by_doc], tfs[by_doc], self.b[rows[by_doc]], n_docs)
        for name, values in zip(("s0", "s1", "s2"), sums):
            snap[name][first : first + n_docs] = values


def _consistent_load(allocate=_new_array) -> tuple[Snapshot, str, int]:
    """The postings (load_snapshot) and the state they are at, read in one transaction
    (REPEATABLE READ on PostgreSQL).

    So a snapshot file holds exactly the index at the version in its name, whatever commits
    meanwhile. Called outside any transaction only.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        epoch, version, _ = _read_state()
        return load_snapshot(allocate), epoch, version


def _map_newest(root, epoch: str, lowest: int, highest: int, discard: bool):
    """(snapshot, epoch, version) of the newest usable file in [lowest, highest], or None.

    discard (under the build lock only): remove the unusable ones, so that they are rebuilt.
    """
    for version, path in snapshot_files.candidates(root, epoch, lowest, highest):
        try:
            return Snapshot.from_file(path, epoch, version), epoch, version
        except snapshot_files.SnapshotFileError as exc:
            log.warning("Ignoring search-index snapshot: %s", exc)
            if discard:
                snapshot_files.discard(path)
    return None


def shared_snapshot(state, newer_than: int = -1) -> tuple[Snapshot, str, int]:
    """A snapshot of the index, its epoch and its version; the caller catches up to `state` by the overlay.

    The newest file of state's epoch with a version in [max(log floor, newer_than + 1), state's
    version], mapped. Without one, under the machine's build lock (another process may be writing
    it just then): that file if it appeared meanwhile, else the postings loaded from PostgreSQL,
    written as the file of the version they are at, and mapped from there so that the pages are
    shared. Inside a transaction nothing is written (its reads may include its own uncommitted
    writes, and a file must hold committed versions only); when the directory cannot be written,
    the process keeps its own copy, as before snapshot files.
    """
    epoch, version, floor = state
    lowest = max(floor, newer_than + 1)
    root = snapshot_files.database_dir()
    found = _map_newest(root, epoch, lowest, version, discard=False)
    if found is not None:
        return found
    if connection.in_atomic_block:
        return load_snapshot(), epoch, version
    snap = None
    try:
        with snapshot_files.build_lock(root):
            found = _map_newest(root, epoch, lowest, version, discard=True)
            if found is not None:
                return found
            with snapshot_files.new_folder(root) as folder:
                snap, epoch, version = _consistent_load(folder.allocate)
                path = folder.commit(snap.arrays(), snap.term_list(), epoch, version)
            snap = None  # its large arrays were the folder's files, mapped read-only from here on
            snapshot_files.clean(root)
            return Snapshot.from_file(path, epoch, version, check_in_background=False), epoch, version
    except (OSError, snapshot_files.SnapshotFileError):
        log.exception("No search-index snapshot file under %s; this process keeps its own copy", root)
        if snap is None:
            snap, epoch, version = _consistent_load()
        return snap, epoch, version


def fetch_documents(doc_ids) -> dict:
    """Current content of some documents: doc_id -> {term: (tf, positions tuple)}, or None when absent."""
    doc_ids = list(doc_ids)
    found = {}
    for start in range(0, len(doc_ids), 5000):
        chunk = doc_ids[start : start + 5000]
        stored = [(doc_id, stored_postings(*packed)) for doc_id, *packed in
                  Document.objects.filter(doc_id__in=chunk).values_list("doc_id", *PACKED)]
        wanted = {term_id for _, (term_ids, *_) in stored for term_id in term_ids.tolist()}
        texts = dict(Term.objects.filter(id__in=wanted).values_list("id", "text"))
        for doc_id, (term_ids, tfs, counts, positions) in stored:
            ends = np.cumsum(counts).tolist()
            positions = positions.tolist()
            found[doc_id] = {
                texts[term_id]: (tf, tuple(positions[end - count : end]))
                for term_id, tf, count, end in zip(term_ids.tolist(), tfs.tolist(), counts.tolist(), ends)
                if term_id in texts  # a term dropped by a commit between the two reads: that change replays
            }
    return {doc_id: found.get(doc_id) for doc_id in doc_ids}


_ABSENT = (0.0, ())


def _phrase_match(doc: dict, phrase) -> bool:
    """Whether a document given as {term: (tf, positions)} contains the phrase [(term, offset), ...]."""
    first_term, first_offset = phrase[0]
    for start in doc.get(first_term, _ABSENT)[1]:
        base = start - first_offset
        if all(base + offset in doc.get(term, _ABSENT)[1] for term, offset in phrase[1:]):
            return True
    return False


class View:
    """A snapshot plus the documents changed since, with idf and norms for the current corpus."""

    def __init__(self, snap: Snapshot, epoch: str, version: int, changed: dict, previous=None):
        """changed: doc_id -> {term: (tf, positions)} or None (deleted), for documents changed since snap.

        previous: the view this one follows on the same snapshot, whose per-document sums are
        reused so that a refresh costs O(documents + postings of the terms whose df moved).
        """
        self.snap, self.epoch, self.version, self.changed = snap, epoch, version, changed
        # The version the snapshot itself is at (the overlay holds what changed after it).
        self.snap_version = previous.snap_version if previous is not None and previous.snap is snap else version
        n_docs = len(snap.doc_ids)
        self.superseded = np.zeros(n_docs, dtype=bool)
        df = snap.df.copy()
        if changed and n_docs:
            keys = np.fromiter(changed, dtype=np.int64, count=len(changed))
            loc = np.searchsorted(snap.doc_ids, keys).clip(max=n_docs - 1)
            gone = loc[snap.doc_ids[loc] == keys]
            self.superseded[gone] = True
            df -= np.bincount(snap.p_term[_postings_of(snap, gone)[0]], minlength=len(df))
        new_df = Counter()
        for doc in changed.values():
            for term in doc or ():
                if term in snap.terms:
                    df[snap.terms[term]] += 1
                else:
                    new_df[term] += 1
        self.df = df
        self.n = n_docs - int(self.superseded.sum()) + sum(doc is not None for doc in changed.values())
        self.idf = np.log((1 + self.n) / (1 + df)) + 1
        self.new_idf = {term: math.log((1 + self.n) / (1 + c)) + 1 for term, c in new_df.items()}
        self.norms = self._norms(previous.norms if previous is not None and previous.snap is snap else None)
        self.overlay = {}  # term -> {doc_id: tf} over changed documents
        self.overlay_norm = {}
        for doc_id, doc in changed.items():
            if doc:
                self.overlay_norm[doc_id] = math.sqrt(sum((tf * self.idf_of(t)) ** 2 for t, (tf, _) in doc.items()))
                for term, (tf, _) in doc.items():
                    self.overlay.setdefault(term, {})[doc_id] = tf

    def _norms(self, previous: "Norms | None", settle: bool = False) -> "Norms":
        """Norms of the snapshot's documents under the current idf.

        idf(t) = A - b(t) with A = ln(1 + n) + 1 and b(t) = ln(1 + df(t)), so
        |d|^2 = A^2 s0 - 2 A s1 + s2. s1 and s2 are brought up to date only for the postings of
        terms whose df moved since they were summed; a new n costs O(D).

        A move of a common term (millions of postings with rich descriptions) changes each norm by
        a tiny fraction: replacing b_old by b_new changes |d|^2 by
        sum tf^2 (b_new - b_old)(idf_old + idf_new), at most slack(t) = |b_new - b_old|
        (|idf_old| + idf_new) / idf_new^2 of |d|^2 since idf_new >= 1. Such terms (LAG_MIN_POSTINGS
        postings or more, slack(t) <= LAG_SLACK) are left at their old df until their slack
        grows past it, and the norms carry the largest slack left: Ranking.top and rank() norm
        exactly every document whose place that uncertainty could change. settle: lag nothing.
        """
        s = self.snap
        s1, s2, applied = (s.s1, s.s2, s.df) if previous is None else (previous.s1, previous.s2, previous.applied_df)
        big_a = math.log(1 + self.n) + 1
        moved = np.flatnonzero(self.df != applied)
        slack = 0.0
        if len(moved):
            b_old, b_new = np.log1p(applied[moved]), np.log1p(self.df[moved])
            idf_new = big_a - b_new
            term_slack = np.abs(b_new - b_old) * (np.abs(big_a - b_old) + idf_new) / np.maximum(idf_new, 1.0) ** 2
            lag = (s.t_ptr[moved + 1] - s.t_ptr[moved] >= LAG_MIN_POSTINGS) & (term_slack <= LAG_SLACK)
            if settle:
                lag[:] = False
            if lag.any():
                slack = float(term_slack[lag].max()) + _ROUNDING
            if not lag.all():
                s1, s2, applied = self._catch_up(moved[~lag], s1, s2, applied)
        norms = s.s0 * (big_a * big_a)
        norms -= (2 * big_a) * s1
        norms += s2
        norms = np.sqrt(np.maximum(norms, 0.0, out=norms), out=norms)
        # Reciprocals, so that scoring multiplies; zero for documents without terms (never matched).
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return Norms(s1, s2, applied, inv, slack)

    def _catch_up(self, terms, s1, s2, applied):
        """s1, s2 and applied_df (copies) with the postings of these terms at their current df."""
        s = self.snap
        # The cost of a change at scale: every posting of these terms. np.add.at (one compiled pass
        # per array) into reused buffers: half the CPU of s1[docs] += ..., which gathers, adds and
        # scatters through fresh temporaries, with the same sums (a term's documents are distinct).
        s1, s2, applied = s1.copy(), s2.copy(), applied.copy()
        longest = int((s.t_ptr[terms + 1] - s.t_ptr[terms]).max())
        tf2_buffer, term_buffer = np.empty(longest), np.empty(longest)
        for t, b_old, b_new in zip(terms.tolist(), np.log1p(applied[terms]).tolist(), np.log1p(self.df[terms]).tolist()):
            a, b = s.t_ptr[t], s.t_ptr[t + 1]
            docs, tf2, part = s.p_doc[a:b], tf2_buffer[: b - a], term_buffer[: b - a]
            np.square(s.p_tf[a:b], out=tf2)
            np.add.at(s1, docs, np.multiply(tf2, b_new - b_old, out=part))
            np.add.at(s2, docs, np.multiply(tf2, b_new * b_new - b_old * b_old, out=part))
        applied[terms] = self.df[terms]
        return s1, s2, applied

    def _exact_factors(self, norms: "Norms", docs: np.ndarray) -> np.ndarray:
        """Per snapshot document, exact reciprocal norm / norms.inv: what makes a score under norms exact.

        Few documents: each normed from its own postings. Many (SETTLE_CONTENDERS): this view's
        norms catch up with every lagging term instead, once for all later searches.
        """
        if len(docs) > SETTLE_CONTENDERS:
            current = self.norms
            if current.slack:
                current = self.norms = self._norms(current, settle=True)
            return current.inv[docs] / norms.inv[docs]
        at, counts = _postings_of(self.snap, docs)
        s = self.snap
        weights = s.p_tf[at] * self.idf[s.p_term[at]]
        squares = np.bincount(np.repeat(np.arange(len(docs)), counts), weights=weights * weights, minlength=len(docs))
        return 1.0 / np.sqrt(squares) / norms.inv[docs]

    def idf_of(self, term: str) -> float | None:
        """Current idf of a term, None when no document contains it."""
        t = self.snap.terms.get(term)
        if t is not None and self.df[t] > 0:
            return float(self.idf[t])
        return self.new_idf.get(term)

    def _term_docs(self, term: str) -> np.ndarray:
        t = self.snap.terms.get(term)
        if t is None:
            return np.zeros(0, dtype=np.int32)
        return self.snap.p_doc[self.snap.t_ptr[t] : self.snap.t_ptr[t + 1]]

    def _phrase_docs(self, phrase) -> np.ndarray:
        """Snapshot documents (local numbers, sorted) where the phrase [(term, offset), ...] occurs."""
        s = self.snap
        keys = None
        for term, offset in phrase:
            t = s.terms.get(term)
            if t is None:
                return np.zeros(0, dtype=np.int64)
            a, b = s.t_ptr[t], s.t_ptr[t + 1]
            docs = np.repeat(s.p_doc[a:b].astype(np.int64), np.diff(s.pos_ptr[a : b + 1]))
            term_keys = (docs << 32) + (s.pos[s.pos_ptr[a] : s.pos_ptr[b]].astype(np.int64) - offset + _KEY_BIAS)
            keys = term_keys if keys is None else np.intersect1d(keys, term_keys)
        return np.unique(keys >> 32)

    def rank(self, parsed, weights: dict, min_score, exclude_ids) -> "Ranking":
        """Every matching document with its score (cosine); weights: query term -> tf * idf.

        Under lagging norms (slack > 0) a snapshot document's score may be off by the factor
        bounds of Norms; Ranking.top makes exact those that can reach the page, and here those
        that min_score could cut wrongly.
        """
        s = self.snap
        norms = self.norms  # read once: another thread may settle the view meanwhile
        n_docs = len(s.doc_ids)
        qnorm = math.sqrt(sum(w * w for w in weights.values()))
        doc_parts, dot_parts = [], []
        for term, w in weights.items():
            t = s.terms.get(term)
            if t is not None and s.t_ptr[t] < s.t_ptr[t + 1]:
                a, b = s.t_ptr[t], s.t_ptr[t + 1]
                doc_parts.append(s.p_doc[a:b])
                dot_parts.append(s.p_tf[a:b] * (self.idf[t] * w / qnorm))
        if len(doc_parts) == 1:  # one term: its postings are already unique and sorted
            cand = doc_parts[0]
            scores = dot_parts[0] * norms.inv[cand]
        elif doc_parts:
            docs, contributions = np.concatenate(doc_parts), np.concatenate(dot_parts)
            if len(docs) * 8 < n_docs:  # few postings: sort them rather than scan every document
                cand, inverse = np.unique(docs, return_inverse=True)
                scores = np.bincount(inverse, weights=contributions) * norms.inv[cand]
            else:
                dense = np.bincount(docs, weights=contributions, minlength=n_docs)
                dense *= norms.inv
                cand = np.flatnonzero(dense)
                scores = dense[cand]
        else:
            cand, scores = np.zeros(0, np.int32), np.zeros(0)
        drop = self.superseded[cand] if self.changed else None
        for phrase in parsed.phrases:
            drop = _or(drop, ~np.isin(cand, self._phrase_docs(phrase)))
        for term in parsed.excluded_terms:
            drop = _or(drop, np.isin(cand, self._term_docs(term)))
        for phrase in parsed.excluded_phrases:
            drop = _or(drop, np.isin(cand, self._phrase_docs(phrase)))
        excluded = np.fromiter((int(i) for i in exclude_ids), dtype=np.int64)
        if len(excluded) and n_docs:
            loc = np.searchsorted(s.doc_ids, excluded).clip(max=n_docs - 1)
            drop = _or(drop, np.isin(cand, loc[s.doc_ids[loc] == excluded]))
        exact = None  # which scores are known exact, under lagging norms
        if norms.slack:
            exact = np.zeros(len(cand), dtype=bool)
            if min_score is not None:
                low, high = norms.bounds()
                unsure = np.flatnonzero((scores * low < min_score) & (scores * high >= min_score))
                scores[unsure] *= self._exact_factors(norms, cand[unsure])
                exact[unsure] = True
        if min_score is not None:
            drop = _or(drop, scores < min_score)
        if drop is not None and drop.any():
            cand, scores = cand[~drop], scores[~drop]
            exact = None if exact is None else exact[~drop]

        extra = self._rank_overlay(parsed, weights, qnorm, set(excluded.tolist()))
        if min_score is not None:
            extra = {doc_id: score for doc_id, score in extra.items() if score >= min_score}
        extra_ids = np.fromiter(extra, dtype=np.int64, count=len(extra))
        if len(extra):
            scores = np.concatenate((scores, np.fromiter(extra.values(), dtype=np.float64, count=len(extra))))
            cand = np.concatenate((cand, -1 - np.arange(len(extra))))
            exact = None if exact is None else np.concatenate((exact, np.ones(len(extra), dtype=bool)))
        refs = cand.astype(np.int64, copy=False)
        if exact is None:
            return Ranking(scores, refs, s.doc_ids, extra_ids)
        return Ranking(scores, refs, s.doc_ids, extra_ids, exact, norms.bounds(), lambda docs: self._exact_factors(norms, docs))

    def _rank_overlay(self, parsed, weights, qnorm, excluded_ids) -> dict:
        """Scores of the matching changed documents (few: plain Python over the overlay)."""
        dots = Counter()
        for term, w in weights.items():
            idf = self.idf_of(term)
            for doc_id, tf in self.overlay.get(term, {}).items():
                dots[doc_id] += tf * idf * w / qnorm
        out = {}
        for doc_id, dot in dots.items():
            doc = self.changed[doc_id]
            if (
                doc_id in excluded_ids
                or any(term in doc for term in parsed.excluded_terms)
                or any(_phrase_match(doc, p) for p in parsed.excluded_phrases)
                or not all(_phrase_match(doc, p) for p in parsed.phrases)
            ):
                continue
            out[doc_id] = dot / self.overlay_norm[doc_id]
        return out

    def matched_terms(self, refs, ids, terms) -> list[list[str]]:
        """For each hit (Ranking refs and ids), which of the query's terms it contains, in query order."""
        out = [[] for _ in refs]
        for term in terms:
            docs = self._term_docs(term)
            if len(docs):
                at = np.searchsorted(docs, refs).clip(max=len(docs) - 1)
                for i in np.flatnonzero((refs >= 0) & (docs[at] == refs)):
                    out[i].append(term)
        for i in np.flatnonzero(refs < 0):
            doc = self.changed[int(ids[i])]
            out[i] = [t for t in terms if t in doc]
        return out


def _postings_of(snap: Snapshot, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every posting (index into p_*) of these snapshot documents, grouped by document, and how many each has."""
    starts, counts = snap.d_ptr[docs], snap.d_ptr[docs + 1] - snap.d_ptr[docs]
    at = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
    return snap.d_post[at], counts


@dataclass(frozen=True)
class Norms:
    """Reciprocal document norms of a view and the sums they come from (View._norms).

    s1 and s2 hold each term at applied_df; where that lags behind the view's df, every norm^2
    is within `slack` (relative) of the exact one.
    """

    s1: np.ndarray
    s2: np.ndarray
    applied_df: np.ndarray
    inv: np.ndarray  # 1 / |d|, 0 for documents without terms
    slack: float

    def bounds(self) -> tuple[float, float]:
        """(low, high): a score made with these norms times low <= the exact score <= times high."""
        return math.sqrt(1.0 - self.slack), math.sqrt(1.0 + self.slack)


def _or(mask, more):
    """Combine drop masks; None stands for "nothing dropped yet" and saves an all-False array."""
    return more if mask is None else mask | more


@dataclass(frozen=True)
class Ranking:
    """Matching documents: ref >= 0 is a snapshot document number, ref < 0 is extra_ids[-1 - ref]."""

    scores: np.ndarray
    refs: np.ndarray
    doc_ids: np.ndarray  # the snapshot's
    extra_ids: np.ndarray  # changed documents, from the overlay
    # Under lagging norms: which scores are exact yet, the bounds of the others (Norms.bounds) and
    # what makes them exact (snapshot documents -> factors); None when every score is exact.
    exact: np.ndarray | None = None
    bounds: tuple[float, float] = (1.0, 1.0)
    exact_factors: object = None

    def ids(self, which) -> np.ndarray:
        refs = self.refs[which]
        base = refs >= 0
        out = np.empty(len(refs), dtype=np.int64)
        out[base] = self.doc_ids[refs[base]]
        out[~base] = self.extra_ids[-1 - refs[~base]]
        return out

    def top(self, start: int, stop: int) -> np.ndarray:
        """Positions of ranks [start, stop): by score (equal to 1e-12 counts as a tie), then doc_id.

        Only documents within 1e-12 of the stop-th best raw score can rank before `stop`, so only
        those are rounded and sorted (and, under lagging norms, made exact first).
        """
        n = len(self.scores)
        if n > stop:
            threshold = np.partition(self.scores, n - stop)[n - stop]
            if self.exact is None:
                chosen = np.flatnonzero(self.scores >= threshold - 1e-12)
            else:
                chosen = self._exact_contenders(threshold, stop)
        else:
            chosen = np.arange(n)
            if self.exact is not None:
                self._make_exact(chosen)
        key = np.round(self.scores[chosen], 12)
        return chosen[np.lexsort((self.ids(chosen), -key))][start:stop]

    def _exact_contenders(self, kth: float, stop: int) -> np.ndarray:
        """Under lagging norms: the positions that can rank before `stop`, their scores made exact.

        kth is the stop-th best score under the lagging norms; times low, it is at most the exact
        stop-th best, so a document ranks before stop only if its exact score reaches that minus
        1e-12, which its lagging score times high must then reach too. Those contenders include
        the stop documents at kth or above, whose exact scores are all above every other
        document's: the exact stop-th best is theirs.
        """
        low, high = self.bounds
        contenders = np.flatnonzero(self.scores * high >= kth * low - 1e-12)
        self._make_exact(contenders)
        scores = self.scores[contenders]
        threshold = np.partition(scores, len(scores) - stop)[len(scores) - stop]
        return contenders[scores >= threshold - 1e-12]

    def _make_exact(self, positions: np.ndarray) -> None:
        unsure = positions[~self.exact[positions]]
        if len(unsure):
            self.scores[unsure] *= self.exact_factors(self.refs[unsure])
            self.exact[unsure] = True


def _overlay_limit(n_docs: int) -> float:
    """Changed documents past which a fresh snapshot is cheaper than the overlay."""
    return max(OVERLAY_MIN, OVERLAY_FRACTION * n_docs)


def _read_state():
    """(epoch, version, log_floor), or None before the first write; raw SQL as it runs per search."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT epoch, version, log_floor FROM {IndexState._meta.db_table} WHERE id = 1")
        return cursor.fetchone()


def _transaction_has_writes() -> bool:
    """Whether the current transaction wrote anything (its view of the index may never commit)."""
    if not connection.in_atomic_block:
        return False
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        return cursor.fetchone()[0]


class Cache:
    """The process's current View, refreshed from the database by version.

    A full snapshot load takes seconds at a million documents. When it is needed because the
    overlay grew, the current view stays exact meanwhile, so the load runs in a background thread
    and is swapped in when ready. Only a new epoch (a rebuild) or a pruned change log makes a
    search wait for it, since the old snapshot no longer describes the index.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._view = None
        self._loader = None  # the background snapshot load, while one runs

    def view(self) -> View:
        """The view matching the database now; one small query when nothing changed.

        Inside a transaction that has written, the result is used for this search only and not
        kept: those writes may still roll back.
        """
        uncommitted = _transaction_has_writes()
        with self._lock:  # state read under the lock, so threads never see versions out of order
            view = self._refresh(self._view, _read_state())
            if not uncommitted:
                self._view = view
                if len(view.changed) > _overlay_limit(len(view.snap.doc_ids)):
                    self._start_loader()
        return view

    def clear(self):
        """Forget the view: the next search loads a fresh snapshot."""
        with self._lock:
            self._view = None

    @staticmethod
    def _refresh(view, state) -> View:
        if state is None:
            return View(Snapshot.empty(), "", 0, {})
        epoch, version, floor = state
        if view is None or view.snap.failed_check or view.epoch != epoch or view.version < floor or view.version > version:
            view = View(*shared_snapshot(state), {})
            if view.epoch == epoch and version - view.version > _overlay_limit(len(view.snap.doc_ids)):
                view = View(*shared_snapshot(state, newer_than=version - 1), {})  # too far behind for an overlay
            if view.epoch != epoch or view.version >= version:  # built at a newer state than read
                return view
        if view.version == version:
            return view
        touched = set(IndexChange.objects.filter(version__gt=view.version).values_list("doc_id", flat=True))
        changed = dict(view.changed)
        changed.update(fetch_documents(touched))
        return View(view.snap, epoch, version, changed, previous=view)

    def _start_loader(self) -> None:
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="searchindex-snapshot", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        """Take a fresher snapshot on this thread's own connection; the next search catches it up."""
        try:
            state = _read_state()
            current = self._view
            if state is not None and current is not None:
                fresh = View(*shared_snapshot(state, newer_than=current.snap_version), {})
                with self._lock:
                    if self._view is not None and self._view.epoch == fresh.epoch:
                        self._view = fresh
        except Exception:  # the next search that needs it starts another
            log.exception("Loading a fresh search-index snapshot failed")
        finally:
            connection.close()
            self._loader = None


cache = Cache()
