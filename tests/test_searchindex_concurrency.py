"""Several worker processes indexing and deleting at once keep document frequencies exact."""
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from searchindex import index as si
from searchindex.engine import fetch_documents
from searchindex.models import Document, IndexChange, Term

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKER = """
import json, sys, time
from pathlib import Path
import django
django.setup()
from searchindex import index as si
barrier, ops = Path(sys.argv[1]), json.loads(sys.argv[2])
(barrier / f"ready-{sys.argv[3]}").touch()
while not (barrier / "go").exists():  # start together, once Django has loaded everywhere
    time.sleep(0.005)
for op, doc_id, text in ops:
    si.index_document(doc_id, text) if op == "index" else si.delete_document(doc_id)
"""

TEXTS = [
    "a dog runs on the beach",
    "a black dog and a white dog play in the snow",
    "a man in a red shirt climbs a rock",
    "two children play in the sprinkler",
    "a woman rides a bike down the street",
    "a brown dog jumps over a log",
]


def database_url() -> str:
    """The test database, for the worker processes."""
    s = connection.settings_dict
    auth = quote(s["USER"]) + (f":{quote(s['PASSWORD'])}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def test_concurrent_workers_keep_document_frequencies_exact(tmp_path):
    rng = random.Random(7)
    workers = []
    for worker in range(4):
        ops = [
            ("delete", d, "") if rng.random() < 0.2 else ("index", d, f"{rng.choice(TEXTS)} w{worker} d{d}")
            for d in (rng.randint(1, 25) for _ in range(30))
        ]
        workers.append(ops)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url()}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), json.dumps(ops), str(i)], env=env,
                         cwd=Path(__file__).resolve().parent.parent)
        for i, ops in enumerate(workers)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    # Document frequencies equal the postings, term by term; no term is left without postings.
    stored = fetch_documents(Document.objects.values_list("doc_id", flat=True))
    postings = Counter(term for doc in stored.values() for term in doc)
    assert dict(Term.objects.values_list("text", "df")) == dict(postings)
    # Every change got its own version, without gaps (a delete of an absent document makes none).
    versions = list(IndexChange.objects.order_by("version").values_list("version", flat=True))
    assert versions == list(range(1, len(versions) + 1))
    assert len(versions) >= sum(op == "index" for ops in workers for op, _, _ in ops)
    # Each stored document is one of the texts written for it, whole.
    written = {}
    for ops in workers:
        for op, doc_id, text in ops:
            if op == "index":
                written.setdefault(doc_id, []).append(text)
    final = {}
    for doc_id, doc in stored.items():
        terms = sorted((term, positions) for term, (_, positions) in doc.items())
        matches = [t for t in written[doc_id] if sorted(_postings(t)) == terms]
        assert matches, doc_id
        final[doc_id] = matches[0]
    # And searching gives what a fresh build of those documents gives.
    before = [(h.doc_id, round(h.score, 9)) for h in si.search("dog play", per_page=100).hits]
    si.rebuild(final.items())
    assert before == [(h.doc_id, round(h.score, 9)) for h in si.search("dog play", per_page=100).hits]


def _postings(text):
    grouped = {}
    for term, position in si.analyze_with_positions(text):
        grouped.setdefault(term, []).append(position)
    return [(term, tuple(positions)) for term, positions in grouped.items()]

