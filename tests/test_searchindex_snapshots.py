"""Snapshot files: built once, mapped by other processes, never trusted when stale or corrupt.

Committing tests (transaction=True): files are written only from committed versions. A fresh
engine.Cache stands for a new process where a second real process is not needed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from django.db import connection

from searchindex import engine, snapshot_files
from searchindex import index as si
from searchindex.models import IndexState

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    (1, "a dog runs on the beach"),
    (2, "a black dog and a white dog play in the snow"),
    (3, "a man in a red shirt climbs a rock"),
    (4, "two children play in the sprinkler"),
]


@pytest.fixture(autouse=True)
def index_dir(settings, tmp_path, monkeypatch):
    settings.IMAGESEARCH_INDEX_DIR = tmp_path / "index"
    monkeypatch.setattr(engine, "cache", engine.Cache())
    return tmp_path / "index"


def new_process(monkeypatch):
    """This process forgets its view, as a newly started one has none."""
    monkeypatch.setattr(engine, "cache", engine.Cache())


def no_postings_load(monkeypatch):
    """Make loading the postings from PostgreSQL fail, to prove a file was mapped instead."""

    def refuse(*args):
        raise AssertionError("the postings were loaded from PostgreSQL")

    monkeypatch.setattr(engine, "load_snapshot", refuse)


def count_postings_loads(monkeypatch) -> list:
    calls = []
    original = engine.load_snapshot

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(engine, "load_snapshot", counted)
    return calls


def folders() -> list[str]:
    return sorted(p.name for p in snapshot_files.database_dir().iterdir() if not p.name.startswith(".lock"))


def hits(query: str) -> list[tuple[int, float]]:
    return [(h.doc_id, round(h.score, 12)) for h in si.search(query).hits]


def state() -> tuple:
    return engine._read_state()


def database_url() -> str:
    s = connection.settings_dict
    auth = quote(s["USER"]) + (f":{quote(s['PASSWORD'])}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_process(code: str, index_dir: Path, *args) -> subprocess.Popen:
    """Another process on this machine (same database and snapshot directory) running `code`."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url(),
           "IMAGESEARCH_INDEX_DIR": str(index_dir)}
    prelude = "import django, json, sys\ndjango.setup()\nfrom searchindex import engine, index as si\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_process(code: str, index_dir: Path, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of start_process."""
    process = start_process(code, index_dir, *args)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_the_first_search_writes_the_file_of_its_version_and_a_new_process_maps_it(monkeypatch):
    si.rebuild(DOCS)
    expected = hits("dog play")
    epoch, version, _ = state()
    assert folders() == [snapshot_files.folder_name(epoch, version)]

    new_process(monkeypatch)
    no_postings_load(monkeypatch)
    assert hits("dog play") == expected
    view = engine.cache.view()
    assert (view.epoch, view.version, view.snap_version) == (epoch, version, version)
    assert not view.snap.p_tf.flags.writeable and isinstance(view.snap.p_tf.base, np.memmap)


@pytest.mark.slow  # starts other processes
def test_a_second_process_maps_the_file_without_reading_postings(index_dir):
    si.rebuild(DOCS)
    expected = hits("dog play")
    code = """
statements = []
def record(execute, sql, params, many, context):
    statements.append(sql)
    return execute(sql, params, many, context)
def refuse(*args):
    raise AssertionError("the postings were loaded from PostgreSQL")
engine.load_snapshot = refuse
from django.db import connection
with connection.execute_wrapper(record):
    found = [(h.doc_id, round(h.score, 12)) for h in si.search("dog play").hits]
print(json.dumps({"hits": found, "statements": statements}))
"""
    status, stdout, stderr = run_process(code, index_dir)
    assert status == 0, stderr
    out = json.loads(stdout.splitlines()[-1])
    assert [tuple(h) for h in out["hits"]] == expected
    assert out["statements"] and not any("searchindex_posting" in sql for sql in out["statements"])


@pytest.mark.slow  # starts other processes
def test_processes_starting_together_read_the_postings_once(index_dir, tmp_path):
    si.rebuild(DOCS)  # no search here: no file yet
    code = """
import time
from pathlib import Path
loads = []
load = engine.load_snapshot
def counted(*args):
    loads.append(1)
    time.sleep(0.5)  # a slow load, so that the other process asks meanwhile
    return load(*args)
engine.load_snapshot = counted
barrier = Path(sys.argv[1])
(barrier / f"ready-{sys.argv[2]}").touch()
while len(list(barrier.glob("ready-*"))) < 2:
    time.sleep(0.005)
found = [h.doc_id for h in si.search("dog").hits]
print(json.dumps({"loads": len(loads), "hits": found}))
"""
    procs = [start_process(code, index_dir, str(tmp_path), str(i)) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert sorted(r["loads"] for r in results) == [0, 1]
    assert all(r["hits"] == [2, 1] for r in results)


def test_a_process_catches_up_from_an_older_file_by_the_overlay(monkeypatch):
    si.rebuild(DOCS)
    si.search("dog")
    si.index_document(5, "a dog and a man on a boat")
    si.delete_document(1)
    expected = hits("dog man")
    assert 5 in dict(expected) and 1 not in dict(expected)
    new_process(monkeypatch)
    no_postings_load(monkeypatch)
    assert hits("dog man") == expected
    view = engine.cache.view()
    assert view.snap_version == view.version - 2 and set(view.changed) == {1, 5}


def test_a_file_of_another_epoch_is_never_used(monkeypatch):
    si.rebuild(DOCS)
    si.search("dog")
    old_epoch, old_version, _ = state()
    si.rebuild([(7, "a cat on a sofa"), (8, "a dog on a sofa")])
    epoch, version, _ = state()
    # Even a copy renamed to the current epoch and version: its manifest says otherwise.
    forged = snapshot_files.database_dir() / snapshot_files.folder_name(epoch, version)
    (snapshot_files.database_dir() / snapshot_files.folder_name(old_epoch, old_version)).rename(forged)
    new_process(monkeypatch)
    loads = count_postings_loads(monkeypatch)
    assert [doc_id for doc_id, _ in hits("dog sofa")] == [8, 7]
    assert loads == [1]
    assert folders() == [snapshot_files.folder_name(epoch, version)]
    assert engine.Snapshot.from_file(forged, epoch, version).doc_ids.tolist() == [7, 8]


def test_a_file_older_than_the_kept_change_log_is_rebuilt(monkeypatch):
    si.rebuild(DOCS)
    si.search("dog")
    si.index_document(5, "a dog and a man on a boat")
    IndexState.objects.filter(pk=1).update(log_floor=state()[1])  # the change to document 5 was pruned
    new_process(monkeypatch)
    loads = count_postings_loads(monkeypatch)
    assert 5 in dict(hits("boat"))
    assert loads == [1]


def corrupt_data(path: Path) -> None:
    data = bytearray((path / "p_tf.npy").read_bytes())
    data[-3] ^= 0xFF  # one bit pattern in the last term frequency
    (path / "p_tf.npy").write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path / "p_doc.npy", "r+b") as handle:
        handle.truncate(os.path.getsize(path / "p_doc.npy") - 4)


def garble_manifest(path: Path) -> None:
    (path / "manifest.json").write_text("{not json")


def drop_array(path: Path) -> None:
    (path / "d_post.npy").unlink()


def other_dtype(path: Path) -> None:
    np.save(path / "s0.npy", np.load(path / "s0.npy").astype(np.float32))


@pytest.mark.parametrize("damage", [corrupt_data, truncate, garble_manifest, drop_array, other_dtype])
def test_a_corrupt_file_is_rebuilt_from_postgresql(monkeypatch, damage):
    si.rebuild(DOCS)
    expected = hits("dog play shirt")
    epoch, version, _ = state()
    path = snapshot_files.database_dir() / snapshot_files.folder_name(epoch, version)
    damage(path)
    with pytest.raises(snapshot_files.SnapshotFileError):
        engine.Snapshot.from_file(path, epoch, version)
    new_process(monkeypatch)
    loads = count_postings_loads(monkeypatch)
    assert hits("dog play shirt") == expected
    assert loads == [1]
    assert engine.Snapshot.from_file(path, epoch, version).doc_ids.tolist() == [1, 2, 3, 4]  # written anew


def test_a_large_array_found_corrupt_after_mapping_is_discarded_and_rebuilt(monkeypatch):
    """Large arrays are checksummed in the background once mapped: a mismatch drops the file and the view."""
    si.rebuild(DOCS)
    expected = hits("dog play shirt")
    epoch, version, _ = state()
    path = snapshot_files.database_dir() / snapshot_files.folder_name(epoch, version)
    corrupt_data(path)
    monkeypatch.setattr(snapshot_files, "CHECK_AT_MAP_BYTES", 16)  # p_tf (13 postings, 104 bytes) is large here
    new_process(monkeypatch)
    loads = count_postings_loads(monkeypatch)
    hits("dog")  # mapped: only the small arrays were checked
    assert loads == []
    check = engine.cache._view.snap.check  # this search's view (the next search may already replace it)
    assert "p_tf" in [name for name, _, _ in check.arrays]
    assert check.done.wait(10) and check.failed
    assert snapshot_files.folder_name(epoch, version) not in folders()
    assert hits("dog play shirt") == expected  # the next search takes a snapshot from PostgreSQL
    assert loads == [1]
    snap = engine.cache.view().snap
    assert not snap.failed_check and snap.p_tf[-1] == engine.load_snapshot().p_tf[-1]


def test_a_sound_file_passes_the_background_check(monkeypatch):
    si.rebuild(DOCS)
    expected = hits("dog play shirt")
    monkeypatch.setattr(snapshot_files, "CHECK_AT_MAP_BYTES", 16)
    new_process(monkeypatch)
    no_postings_load(monkeypatch)
    assert hits("dog play shirt") == expected
    check = engine.cache._view.snap.check
    assert len(check.arrays) >= 6 and check.done.wait(10) and not check.failed
    assert hits("dog play shirt") == expected


def test_a_commit_between_the_two_reads_of_the_postings_makes_the_load_read_again(monkeypatch):
    """Under READ COMMITTED (no REPEATABLE READ transaction around it) the counting read and the
    placing read may see different rows: detected, and read again."""
    si.rebuild(DOCS)
    pages = engine._document_pages
    reads = []

    def commit_after_the_first_read(columns):
        reads.append(columns)
        if len(reads) == 2:  # the placing read of the first try
            si.index_document(9, "a dog in a boat")
        return pages(columns)

    monkeypatch.setattr(engine, "_document_pages", commit_after_the_first_read)
    snap = engine.load_snapshot()
    assert len(reads) == 4  # counted and placed twice
    assert snap.doc_ids.tolist() == [1, 2, 3, 4, 9]
    monkeypatch.undo()
    fresh = engine.load_snapshot()
    for name in engine.SNAPSHOT_ARRAYS:
        assert np.array_equal(getattr(snap, name), getattr(fresh, name)), name


@pytest.mark.slow  # starts other processes
def test_a_crash_while_writing_leaves_the_previous_file_usable(index_dir, monkeypatch):
    si.rebuild(DOCS)
    si.search("dog")
    _, first, _ = state()
    si.index_document(5, "a dog and a man on a boat")
    expected = hits("dog boat")
    crash = """
import numpy as np, os
saved = []
real_save = np.save
def save_then_die(*args, **kwargs):
    saved.append(1)
    if len(saved) == 4:
        os._exit(3)  # killed half-way through the arrays
    real_save(*args, **kwargs)
np.save = save_then_die
engine.shared_snapshot(engine._read_state(), newer_than=int(sys.argv[1]))
"""
    status, _, stderr = run_process(crash, index_dir, str(first))
    assert status == 3, stderr
    epoch, version, _ = state()
    assert [name for name in folders() if name.startswith(".tmp-")]
    assert snapshot_files.folder_name(epoch, version) not in folders()

    new_process(monkeypatch)
    no_postings_load(monkeypatch)
    assert hits("dog boat") == expected  # the first version's file, caught up by the overlay
    assert engine.cache.view().snap_version == first

    monkeypatch.undo()
    engine.shared_snapshot(state(), newer_than=first)  # the next builder clears the dead one's folder
    assert folders() == [snapshot_files.folder_name(epoch, first), snapshot_files.folder_name(epoch, version)]


def test_only_the_newest_two_files_are_kept():
    si.rebuild(DOCS)
    for doc_id in range(10, 14):
        si.index_document(doc_id, f"a dog number {doc_id}")
        engine.shared_snapshot(state(), newer_than=state()[1] - 1)
    epoch, version, _ = state()
    assert folders() == [snapshot_files.folder_name(epoch, v) for v in (version - 1, version)]


def test_without_a_writable_directory_each_process_keeps_its_own_copy(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.IMAGESEARCH_INDEX_DIR = blocker
    si.rebuild(DOCS)
    assert [doc_id for doc_id, _ in hits("snow")] == [2]


def test_postings_loaded_page_by_page_equal_one_read(monkeypatch):
    """The PostgreSQL load reads the Document rows a page at a time (binary COPY); pages join seamlessly."""
    si.rebuild(DOCS)
    si.index_documents([(3, "a man in a red shirt"), (9, [si.Field("dog snow", 2.5), si.Field("red", 0.25)])])
    si.delete_document(2)
    whole = engine.load_snapshot()
    monkeypatch.setattr(engine, "LOAD_PAGE", 2)
    paged = engine.load_snapshot()
    assert paged.terms == whole.terms and list(paged.doc_ids) == [1, 3, 4, 9]
    for name in engine.SNAPSHOT_ARRAYS:
        assert np.array_equal(getattr(paged, name), getattr(whole, name)), name
    row = paged.terms["dog"]
    assert paged.p_tf[paged.t_ptr[row] : paged.t_ptr[row + 1]].tolist() == [1.0, 2.5]
