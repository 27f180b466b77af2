"""Storage of the inverted index; PostgreSQL is the source of truth, searches run from memory.

Only searchindex.index writes these tables, always inside one transaction that first locks the
IndexState row; that lock serialises writers, keeps document frequencies exact and gives every
change a version number in commit order (see docs/search.md).

Postings reference terms and documents without database foreign-key constraints: per-row
constraint triggers would dominate the cost of bulk loads (millions of postings), and the one
writer keeps the references whole.
"""

from django.db import models


class Term(models.Model):
    text = models.CharField(max_length=255, unique=True)
    df = models.PositiveIntegerField(default=0, db_index=True, help_text="Number of documents containing the term.")

    def __str__(self):
        return f"{self.text} ({self.df})"


class Document(models.Model):
    doc_id = models.BigIntegerField(primary_key=True)
    length = models.PositiveIntegerField(help_text="Number of indexed terms (stop words excluded).")

    def __str__(self):
        return f"document {self.doc_id}"


class Posting(models.Model):
    pk = models.CompositePrimaryKey("document", "term")
    # No index of its own on document: the primary key (document, term) leads with it.
    document = models.ForeignKey(
        Document, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="postings"
    )
    term = models.ForeignKey(Term, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    tf = models.FloatField(help_text="Weighted term frequency: the sum of the weights of the term's occurrences.")
    positions = models.TextField(help_text="Space-separated word positions of the term, stop words counted.")

    def __str__(self):
        return f"{self.term_id} in {self.document_id} x{self.tf}"


class IndexState(models.Model):
    """One row: the index version, bumped by every change, and the epoch, new at every rebuild."""

    epoch = models.CharField(max_length=32)
    version = models.BigIntegerField(default=0)
    log_floor = models.BigIntegerField(default=0, help_text="Changes at or below this version were pruned.")


class IndexChange(models.Model):
    """Which document each version touched, so search processes refresh only what changed."""

    version = models.BigIntegerField(primary_key=True)
    doc_id = models.BigIntegerField()
