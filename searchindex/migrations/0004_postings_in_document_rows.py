"""One row per document holding its postings as packed arrays, instead of one row per posting.

The existing Posting rows are converted document by document (and back, when unapplied), so an
existing gallery keeps its index and its snapshot version: nothing needs rebuilding.
"""

import numpy as np
from django.db import migrations, models

PACKED = ("term_ids", "tfs", "position_counts", "positions")
CHUNK = 2_000  # documents per step


def _pack(postings) -> dict:
    """[(term_id, tf, "p p p")] -> the four packed columns (searchindex.models.STORED_POSTINGS)."""
    positions = [[int(p) for p in text.split()] for _, _, text in postings]
    return {
        "term_ids": np.array([p[0] for p in postings], dtype="<i4").tobytes(),
        "tfs": np.array([p[1] for p in postings], dtype="<f8").tobytes(),
        "position_counts": np.array([len(p) for p in positions], dtype="<i4").tobytes(),
        "positions": np.array([p for ps in positions for p in ps], dtype="<i4").tobytes(),
    }


def postings_into_documents(apps, schema_editor):
    Document = apps.get_model("searchindex", "Document")
    Posting = apps.get_model("searchindex", "Posting")
    doc_ids = list(Document.objects.order_by("doc_id").values_list("doc_id", flat=True))
    for start in range(0, len(doc_ids), CHUNK):
        chunk = doc_ids[start : start + CHUNK]
        grouped = {doc_id: [] for doc_id in chunk}
        rows = Posting.objects.filter(document_id__in=chunk).order_by("document_id", "term_id")
        for doc_id, term_id, tf, positions in rows.values_list("document_id", "term_id", "tf", "positions"):
            grouped[doc_id].append((term_id, tf, positions))
        documents = [Document(doc_id=doc_id, **_pack(postings)) for doc_id, postings in grouped.items()]
        Document.objects.bulk_update(documents, PACKED)


def documents_into_postings(apps, schema_editor):
    Document = apps.get_model("searchindex", "Document")
    Posting = apps.get_model("searchindex", "Posting")
    doc_ids = list(Document.objects.order_by("doc_id").values_list("doc_id", flat=True))
    for start in range(0, len(doc_ids), CHUNK):
        postings = []
        for doc_id, *packed in Document.objects.filter(doc_id__in=doc_ids[start : start + CHUNK]).values_list(
            "doc_id", *PACKED
        ):
            term_ids, tfs, counts, positions = (
                np.frombuffer(value, dtype=dtype) for value, dtype in zip(packed, ("<i4", "<f8", "<i4", "<i4"))
            )
            ends = np.cumsum(counts)
            for term_id, tf, end, count in zip(term_ids.tolist(), tfs.tolist(), ends.tolist(), counts.tolist()):
                text = " ".join(map(str, positions[end - count : end].tolist()))
                postings.append(Posting(document_id=doc_id, term_id=term_id, tf=tf, positions=text))
        Posting.objects.bulk_create(postings, batch_size=5_000)


class Migration(migrations.Migration):

    dependencies = [
        ("searchindex", "0003_weighted_term_frequency"),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="term_ids",
            field=models.BinaryField(default=b"", help_text="int32 little-endian: the Term id of each posting."),
        ),
        migrations.AddField(
            model_name="document",
            name="tfs",
            field=models.BinaryField(
                default=b"",
                help_text="float64 little-endian, per posting: the sum of the weights of the term's occurrences.",
            ),
        ),
        migrations.AddField(
            model_name="document",
            name="position_counts",
            field=models.BinaryField(default=b"", help_text="int32 little-endian, per posting: its number of positions."),
        ),
        migrations.AddField(
            model_name="document",
            name="positions",
            field=models.BinaryField(
                default=b"", help_text="int32 little-endian: word positions (stop words counted), posting after posting."
            ),
        ),
        migrations.RunPython(postings_into_documents, documents_into_postings),
        migrations.DeleteModel(name="Posting"),
    ]
