"""Storage of the inverted index; PostgreSQL is the source of truth, searches run from memory.

Only searchindex.index writes these tables, always inside one transaction that first locks the
IndexState row; that lock serialises writers, keeps document frequencies exact and gives every
change a version number in commit order (see docs/search.md).

A document's postings live in its own row, as four packed little-endian arrays (one entry per
term, in the same order, plus the positions of each term in turn): a rich photo has about 200
postings, and one row per posting made bulk indexing and loading cost a row, a COPY line and a
primary-key entry each (docs/search.md, "Storage"). Bytes rather than PostgreSQL arrays: NumPy
reads them as they are, and the SQLite fallback stores them too. The term ids reference Term
rows without a database constraint; the one writer keeps them whole.
"""

import numpy as np
from django.db import models

TERM_ID = np.dtype("<i4")
TF = np.dtype("<f8")  # exact: the rankings equal scikit-learn's to the last bits
POSITION_COUNT = np.dtype("<i4")
POSITION = np.dtype("<i4")
STORED_POSTINGS = (("term_ids", TERM_ID), ("tfs", TF), ("position_counts", POSITION_COUNT), ("positions", POSITION))


class Term(models.Model):
    text = models.CharField(max_length=255, unique=True)
    df = models.PositiveIntegerField(default=0, db_index=True, help_text="Number of documents containing the term.")

    def __str__(self):
        return f"{self.text} ({self.df})"


class Document(models.Model):
    doc_id = models.BigIntegerField(primary_key=True)
    length = models.PositiveIntegerField(help_text="Number of indexed terms (stop words excluded).")
    term_ids = models.BinaryField(default=b"", help_text="int32 little-endian: the Term id of each posting.")
    tfs = models.BinaryField(
        default=b"", help_text="float64 little-endian, per posting: the sum of the weights of the term's occurrences."
    )
    position_counts = models.BinaryField(default=b"", help_text="int32 little-endian, per posting: its number of positions.")
    positions = models.BinaryField(
        default=b"", help_text="int32 little-endian: word positions (stop words counted), posting after posting."
    )

    def __str__(self):
        return f"document {self.doc_id}"


def stored_postings(term_ids, tfs, position_counts, positions) -> tuple[np.ndarray, ...]:
    """A Document row's four packed columns as arrays (read-only views of the bytes)."""
    return tuple(np.frombuffer(value, dtype=dtype) for value, (_, dtype) in
                 zip((term_ids, tfs, position_counts, positions), STORED_POSTINGS))


class IndexState(models.Model):
    """One row: the index version, bumped by every change, and the epoch, new at every rebuild."""

    epoch = models.CharField(max_length=32)
    version = models.BigIntegerField(default=0)
    log_floor = models.BigIntegerField(default=0, help_text="Changes at or below this version were pruned.")


class IndexChange(models.Model):
    """Which document each version touched, so search processes refresh only what changed."""

    version = models.BigIntegerField(primary_key=True)
    doc_id = models.BigIntegerField()
