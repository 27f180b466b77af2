"""Search-index benchmark: bulk indexing, snapshot load, memory and query latency, against PostgreSQL's FTS.

For each size it generates documents with Flickr8k's word statistics (a word-trigram model of the
real captions in ../shared), bulk-indexes them with searchindex.index.rebuild() in a scratch
PostgreSQL database (`imagesearch_search_bench`, dropped afterwards) and builds the snapshot file
(the first search). A second, new process then maps that file and times 1-, 2- and 4-word
queries (common words such as "man" and "dog" included) through searchindex.index.search(), top
20 of the ranked results, as a web or worker process started after the build would. The baseline
indexes the same rows as a tsvector column with a GIN index and answers the same queries (any
word, as ours) ranked by ts_rank, top 20.

--documents plain: one caption per photo. --documents rich: what the product indexes per photo
with the bundled model (captioning/models/current, e.g. flickr8k-v5), turned into fields by
gallery.descriptions.document_fields with the model's own weights (meta.json ``search``): a
caption and the model's number of beam alternatives (new trigram sentences), plus the concept
words and object labels of a real Flickr8k dev photo drawn at random: the bundled concept head's
words with their probabilities, computed from the dev photos' cached InceptionV3 features, and
the object labels from the cached classifier outputs (both caches are filled by `manage.py
evaluate_search --split dev`). So the number of concept words per photo (flickr8k-v5: up to 100,
p >= 0.01), how often each word occurs across photos and its weight are the product's, which is
what decides the length of the postings lists. The baseline gets the same text, every field once.

    python bench/search_bench.py --documents rich --sizes 10000,100000 [--json] [--plot FILE.png] [--no-baseline]
        [--baseline-queries K]

The documents are generated as rebuild() consumes them (a million rich photos' fields would not
fit in memory at once); index_per_s leaves the generation time out.

With --json each engine and size gives one line on stdout:
    {"size": N, "documents": "rich", "engine": "imagesearch" | "postgres-fts", "index_per_s": ...,
     "p50_ms": ..., "p95_ms": ..., "snapshot_load_s": ..., "rss_mb": ..., ...}
For imagesearch, measured in the searching process: snapshot_load_s (its first search: state
read, files mapped and their small arrays checksummed, norms), check_s (the large arrays'
checksums after that, on a background thread; the queries are timed after it), rss_mb (its resident memory; the mapped snapshot's
pages are shared with every other process of the machine and counted once here), anon_mb (its
unshared memory, which every extra process costs again), file_mb (mapped file pages),
refresh_ms and refresh_max_ms (the first search after one index_document: median and worst of
REFRESH_SAMPLES changes, each a new photo). snapshot_build_s (load from PostgreSQL
and write the file, once per version and machine) and postgres_load_s (the load alone: what
every process paid before snapshot files) come from the indexing process. Details (p50/p95 per
query length) go to stderr.
"""
import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = "imagesearch_search_bench"
CAPTIONS = ROOT.parent / "shared" / "datasets" / "flickr8k" / "captions.txt"
QUERIES_PER_LENGTH = 60
COMMON = ["man", "dog", "man dog", "a man and a dog", "people", "red shirt", "two dogs playing", "woman in a red dress"]
TOP = 20
REFRESH_SAMPLES = 10  # changes timed one by one: the first search after each
QUERY_SAMPLE = 20_000  # documents whose texts queries are drawn from, without the baseline
MODEL_DIR = ROOT / "captioning" / "models" / "current"
FLICKR_IMAGES = CAPTIONS.parent / "images"
VAR = Path(os.environ.get("IMAGESEARCH_DATA_DIR", ROOT / "var"))  # read before tests.settings points it at a scratch folder


def admin(sql: str) -> None:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


class CaptionModel:
    """A word-trigram model of the Flickr8k captions: new sentences with the same word statistics."""

    def __init__(self, path: Path, seed: int = 0):
        self.rng = random.Random(seed)
        self.next = defaultdict(list)
        for line in path.read_text(encoding="utf-8").splitlines():
            words = ["<s>", "<s>", *line.split("\t", 1)[-1].lower().split(), "</s>"]
            for a, b, c in zip(words, words[1:], words[2:]):
                self.next[a, b].append(c)

    def sentence(self) -> str:
        a, b, words = "<s>", "<s>", []
        while len(words) < 40:
            c = self.rng.choice(self.next[a, b])
            if c == "</s>":
                break
            words.append(c)
            a, b = b, c
        return " ".join(words)


class RichDescriptions:
    """Photos described as the product describes them with the bundled model (see the module's docstring).

    The captions are new trigram sentences; the concept words and object labels are those of a
    real dev photo, so that their number per photo and their spread over the photos are real.
    """

    def __init__(self, model: CaptionModel, seed: int = 0, model_dir: Path = MODEL_DIR):
        from captioning import features as feature_store
        from captioning.concepts import load_concept_head
        from captioning.inference import CONCEPT_FLOOR, CONCEPTS_KEPT
        from captioning.objects import default_words
        from captioning.storage import read_meta
        from gallery.descriptions import SearchWeights

        self.model, self.rng = model, random.Random(seed)
        meta = read_meta(model_dir)
        self.weights = SearchWeights.from_meta(meta)
        names = (CAPTIONS.parent / "dev.txt").read_text().split()
        feature_dir = feature_store.default_cache_dir(VAR, FLICKR_IMAGES)
        class_dir = feature_store.default_class_cache_dir(VAR, FLICKR_IMAGES)
        missing = [d for d in (feature_dir, class_dir) if not all(feature_store.cache_path(d, n).is_file() for n in names)]
        if missing:
            raise SystemExit(f"--documents rich needs the dev photos' cached features in {', '.join(map(str, missing))}; "
                             "run `python manage.py evaluate_search --split dev` once to fill them")
        head = load_concept_head(model_dir / meta["concepts"]["file"], expected_sha256=meta["concepts"]["sha256"])
        self.concepts = []
        for start in range(0, len(names), 100):
            chunk = feature_store.load_features(feature_dir, names[start : start + 100]).astype(np.float32)
            self.concepts += head.ranked(head.probabilities(chunk), min_probability=CONCEPT_FLOOR, top_k=CONCEPTS_KEPT)
        self.objects = default_words().ranked(feature_store.load_class_probabilities(class_dir, names))
        log(f"rich documents: {model_dir.resolve().name}'s weights {self.weights.to_dict()}; concept words and "
            f"object labels of {len(names)} dev photos")

    def fields(self):
        from gallery.descriptions import document_fields

        captions = [self.model.sentence() for _ in range(1 + self.weights.max_alternatives)]
        photo = self.rng.randrange(len(self.concepts))
        return document_fields(
            captions[0], alternatives=[(c, 0.0) for c in captions[1:]], concepts=self.concepts[photo],
            objects=self.objects[photo], weights=self.weights,
        )


def as_text(document) -> str:
    """The text of a document, every field once (the baseline's row, and where queries are drawn from)."""
    return document if isinstance(document, str) else ". ".join(f.text for f in document)


def make_queries(captions: list[str], rng: random.Random) -> dict[int, list[str]]:
    """Queries of 1, 2 and 4 words taken from the documents, plus common-word queries."""
    from searchindex.analysis import STOP_WORDS

    queries = {1: [], 2: [], 4: []}
    for length in queries:
        while len(queries[length]) < QUERIES_PER_LENGTH:
            words = [w for w in rng.choice(captions).split() if w.isalpha() and w not in STOP_WORDS]
            if len(words) >= length:
                queries[length].append(" ".join(rng.sample(words, length)))
    queries[0] = COMMON
    return queries


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def time_queries(run, queries) -> tuple[list[float], dict]:
    """Latencies in ms of every query (after 3 warm-up queries per length), and p50/p95 per length."""
    times, by_length = [], {}
    for length, group in queries.items():
        for query in group[:3]:
            run(query)
        part = []
        for query in group:
            t = time.perf_counter()
            run(query)
            part.append((time.perf_counter() - t) * 1000)
        by_length[length] = percentiles(part)
        times += part
    return times, by_length


def memory_mb() -> dict:
    """This process's resident memory from /proc: all of it, the unshared (anonymous) part, mapped files."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "anon_mb": fields["RssAnon"], "file_mb": fields["RssFile"]}


def search_process(job: Path) -> None:
    """The searching process: a new one, started after the build, that maps the snapshot file."""
    spec = json.loads(job.read_text())
    started = time.perf_counter()
    import django
    from django.conf import settings

    from tests import settings as full

    # searchindex alone: the project's other apps import TensorFlow at start-up, which is not the index's memory.
    settings.configure(DATABASES=full.DATABASES, INSTALLED_APPS=["searchindex"], USE_TZ=True,
                       DEFAULT_AUTO_FIELD=full.DEFAULT_AUTO_FIELD, IMAGESEARCH_INDEX_DIR=os.environ["IMAGESEARCH_INDEX_DIR"])
    django.setup()
    from django.db import connection

    from searchindex import engine
    from searchindex import index as si

    connection.ensure_connection()
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.cache.view()
    load_s = time.perf_counter() - started
    loaded_postings = engine.cache.view().snap.p_tf.base is None  # its own arrays: read from PostgreSQL
    # The large arrays' checksums run on a thread after the first search; timed, and waited for
    # before the queries so that they are not timed against it.
    check = engine.cache.view().snap.check
    started = time.perf_counter()
    check_failed = check is not None and (not check.done.wait(600) or check.failed)
    check_s = time.perf_counter() - started
    queries = {int(k): v for k, v in spec["queries"].items()}
    times, by_length = time_queries(lambda q: si.search(q, per_page=TOP), queries)
    memory = memory_mb()
    # The cost of keeping norms exact: the first search after a change brings them up to date.
    refresh_times = []
    for k, new_doc in enumerate(spec["new_docs"]):
        si.index_document(spec["new_doc_id"] + k, new_doc)
        t = time.perf_counter()
        si.search("dog", per_page=TOP)
        refresh_times.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"setup_s": setup_s, "load_s": load_s, "loaded_postings": loaded_postings, "check_s": check_s,
                      "check_failed": check_failed, "times": times,
                      "by_length": by_length, "refresh_ms": statistics.median(refresh_times),
                      "refresh_max_ms": max(refresh_times), **memory}))


class Generated:
    """size documents made as rebuild() consumes them (a million rich photos' fields would not fit
    in memory at once), keeping their texts (every one for the baseline, else a sample to draw
    queries from) and the time spent making them, which is not indexing."""

    def __init__(self, make, size: int, keep_texts: int):
        self.make, self.size, self.keep_texts = make, size, keep_texts
        self.texts: list[str] = []
        self.seconds = 0.0

    def __iter__(self):
        for doc_id in range(1, self.size + 1):
            started = time.perf_counter()
            document = self.make()
            if len(self.texts) < self.keep_texts:
                self.texts.append(as_text(document))
            self.seconds += time.perf_counter() - started
            yield doc_id, document


def bench_imagesearch(documents: Generated, make_queries_from):
    """Index and time; index_s excludes the documents' generation (interleaved with the analysis)."""
    from searchindex import engine
    from searchindex import index as si

    started = time.perf_counter()
    si.rebuild(documents)
    index_s = time.perf_counter() - started - documents.seconds
    log(f"[{documents.size}] generated the documents in {documents.seconds:.1f}s, indexed in {index_s:.1f}s")
    queries = make_queries_from(documents.texts)
    new_docs = [as_text(documents.make()) for _ in range(REFRESH_SAMPLES)]
    load_times = []
    load_snapshot = engine.load_snapshot

    def timed_load(*args):
        t = time.perf_counter()
        snap = load_snapshot(*args)
        load_times.append(time.perf_counter() - t)
        return snap

    engine.load_snapshot = timed_load
    started = time.perf_counter()
    si.search("warm up")
    build_s = time.perf_counter() - started
    engine.load_snapshot = load_snapshot
    child = run_search_process(queries, documents.size + 1, new_docs)
    return index_s, build_s, load_times[0], child, snapshot_mb(), queries, new_docs


def run_search_process(queries, new_doc_id: int, new_docs: list) -> dict:
    """Start a new searching process (search_process) and return what it measured; it indexes new_docs from new_doc_id on."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job:
        json.dump({"queries": queries, "new_doc_id": new_doc_id, "new_docs": new_docs}, job)
    try:
        done = subprocess.run([sys.executable, __file__, "--search-process", job.name],
                              capture_output=True, text=True, check=True)
    finally:
        os.unlink(job.name)
    return json.loads(done.stdout.splitlines()[-1])


def snapshot_mb() -> float:
    """Size of the newest snapshot folder."""
    from searchindex import snapshot_files

    newest = max((p for p in snapshot_files.database_dir().iterdir() if not p.name.startswith(".")),
                 key=lambda p: p.stat().st_mtime_ns)
    return sum(f.stat().st_size for f in newest.iterdir()) / 2**20


def tiled_snapshot(snap, copies: int):
    """The snapshot's postings repeated `copies` times, each copy's documents numbered after the last's."""
    import numpy as np

    from searchindex.engine import Snapshot

    n_docs, span = len(snap.doc_ids), int(snap.doc_ids.max()) + 1
    doc_ids = np.concatenate([snap.doc_ids + k * span for k in range(copies)])
    p_doc = np.concatenate([snap.p_doc + k * n_docs for k in range(copies)]).astype(np.int32)
    p_term, p_tf = np.tile(snap.p_term, copies), np.tile(snap.p_tf, copies)
    counts = np.tile(np.diff(snap.pos_ptr), copies)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.tile(snap.pos, copies)
    order = np.argsort(p_term, kind="stable")  # by term, then by document (copies come in document order)
    counts, starts = counts[order], starts[order]
    pos_ptr = np.concatenate(([0], np.cumsum(counts)))
    gather = np.repeat(starts - pos_ptr[:-1], counts) + np.arange(pos_ptr[-1])
    return Snapshot.build(dict(snap.terms), doc_ids, p_doc[order], p_term[order], p_tf[order], pos_ptr, pos[gather])


def bench_tiled(size: int, copies: int, queries, new_docs: list):
    """The last size's snapshot repeated to size x copies photos, written as the current version's file.

    Only the file holds the copies (PostgreSQL keeps `size` photos): this measures what a new
    process pays to map it, its memory, query latency and the first search after a change at that
    size, not indexing.
    """
    from searchindex import engine, snapshot_files
    from searchindex import index as si

    for k in range(len(new_docs)):  # the searching process's changes: PostgreSQL back to the snapshot's photos
        si.delete_document(size + 1 + k)
    epoch, version, _ = engine._read_state()
    started = time.perf_counter()
    tiled = tiled_snapshot(engine.cache.view().snap, copies)
    root = snapshot_files.database_dir()
    with snapshot_files.build_lock(root):
        snapshot_files.discard(root / snapshot_files.folder_name(epoch, version))
        snapshot_files.write(root, tiled.arrays(), tiled.term_list(), epoch, version)
    log(f"[{size * copies}] tiled snapshot ({len(tiled.p_doc):,} postings) written in {time.perf_counter() - started:.1f}s")
    del tiled
    return run_search_process(queries, copies * (size + 1) + 1, new_docs), snapshot_mb()


def bench_fts(texts, queries):
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_fts")
        cur.execute(
            "CREATE TABLE bench_fts (id bigint PRIMARY KEY, caption text NOT NULL, "
            "tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', caption)) STORED)"
        )
        started = time.perf_counter()
        buffer = io.StringIO("".join(f"{i}\t{c}\n" for i, c in enumerate(texts, start=1)))
        cur.cursor.copy_expert("COPY bench_fts (id, caption) FROM STDIN", buffer)
        cur.execute("CREATE INDEX bench_fts_tsv ON bench_fts USING gin (tsv)")
        index_s = time.perf_counter() - started
        cur.execute("ANALYZE bench_fts")
        sql = (
            "SELECT id, ts_rank(tsv, q) AS rank FROM bench_fts, websearch_to_tsquery('english', %s) q "
            "WHERE tsv @@ q ORDER BY rank DESC, id LIMIT %s"
        )

        def run(query):
            cur.execute(sql, (" or ".join(query.split()), TOP))  # any word, as imagesearch
            cur.fetchall()

        times, by_length = time_queries(run, queries)
        cur.execute("DROP TABLE bench_fts")
    return index_s, times, by_length


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_latency, ax_index, ax_load) = plt.subplots(1, 3, figsize=(14, 4))
    for engine, style, color in (("imagesearch", "o-", "tab:blue"), ("postgres-fts", "s--", "tab:orange")):
        mine = [r for r in rows if r["engine"] == engine]
        sizes = [r["size"] for r in mine]
        ax_latency.plot(sizes, [r["p95_ms"] for r in mine], style, color=color, label=f"{engine} p95")
        ax_latency.plot(sizes, [r["p50_ms"] for r in mine], style, color=color, alpha=0.35, label=f"{engine} p50")
        indexed = [r for r in mine if r["index_per_s"]]  # not at a tiled size
        ax_index.plot([r["size"] for r in indexed], [r["index_per_s"] for r in indexed], style, color=color, label=engine)
    mine = [r for r in rows if r["engine"] == "imagesearch"]
    ax_load.plot([r["size"] for r in mine], [r["snapshot_load_s"] for r in mine], "o-", color="tab:blue",
                 label="new process: map the file")
    built = [r for r in mine if "postgres_load_s" in r]
    ax_load.plot([r["size"] for r in built], [r["postgres_load_s"] for r in built], "o--", color="tab:gray",
                 label="load from PostgreSQL (every process, before)")
    titles = ((ax_latency, "Query latency", "ms"), (ax_index, "Bulk indexing", "photos / s"),
              (ax_load, "Snapshot load per process", "s"))
    for ax, title, unit in titles:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("photos")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(rows, args, size, child, fts_index_s, fts_times, fts_by_length, more: dict) -> None:
    """One row (a JSON line with --json) per engine."""
    p50, p95 = percentiles(child["times"])
    mine = {"size": size, "documents": args.documents, "engine": "imagesearch",
            "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "snapshot_load_s": round(child["load_s"], 3), "check_s": round(child["check_s"], 2),
            "rss_mb": child["rss_mb"], "anon_mb": child["anon_mb"], "file_mb": child["file_mb"],
            "refresh_ms": round(child["refresh_ms"], 1), "refresh_max_ms": round(child["refresh_max_ms"], 1), **more}
    measured = [(mine, child["by_length"])]
    if fts_times:
        p50, p95 = percentiles(fts_times)
        theirs = {"size": size, "documents": args.documents, "engine": "postgres-fts",
                  "index_per_s": round(size / fts_index_s, 1), "p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}
        measured.append((theirs, fts_by_length))
    for row, lengths in measured:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{size:>9} {row['engine']:<13} index {row['index_per_s'] or 0:>10,.0f}/s  "
                  f"p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f} ms", flush=True)
        log(f"[{size}] {row['engine']}: p50/p95 ms by words per query (0 = common-word set): "
            + ", ".join(f"{k}: {v[0]:.2f}/{v[1]:.2f}" for k, v in sorted(lengths.items(), key=lambda kv: int(kv[0]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--documents", choices=("plain", "rich"), default="plain",
                        help="One caption per photo, or rich descriptions (see above).")
    parser.add_argument("--json", action="store_true", help="One JSON object per engine and size on stdout.")
    parser.add_argument("--plot", type=Path, help="Write a PNG plot of the results here.")
    parser.add_argument("--tile-to", type=int, help="Also measure a snapshot of this many photos made by repeating "
                        "the last size's (mapping, memory, latency; not indexing).")
    parser.add_argument("--no-baseline", action="store_true",
                        help="Skip PostgreSQL's ts_rank (at 1M it alone outlasts a 12-minute slot); run it separately.")
    parser.add_argument("--baseline-queries", type=int, metavar="K",
                        help="Time ts_rank on the first K queries of each length only (seconds each at 1M).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-process", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    if args.search_process:
        search_process(args.search_process)
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin(f"CREATE DATABASE {DATABASE}")
    index_dir = Path(tempfile.mkdtemp(prefix="search-bench-index-"))
    os.environ["IMAGESEARCH_INDEX_DIR"] = str(index_dir)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    rows = []
    try:
        call_command("migrate", "searchindex", verbosity=0)
        model = CaptionModel(CAPTIONS, seed=args.seed)
        rich = RichDescriptions(model, seed=args.seed) if args.documents == "rich" else None
        rng = random.Random(args.seed)
        make = rich.fields if rich else model.sentence
        for size in sizes:
            documents = Generated(make, size, keep_texts=QUERY_SAMPLE if args.no_baseline else size)
            index_s, build_s, pg_load_s, child, folder_mb, queries, new_docs = bench_imagesearch(
                documents, lambda texts: make_queries(texts, rng))
            texts = documents.texts
            fts_index_s, fts_times, fts_by_length = (None, None, None) if args.no_baseline else bench_fts(
                texts, {length: group[: args.baseline_queries] for length, group in queries.items()})
            log(f"[{size}] snapshot: built in {build_s:.2f}s (of which the PostgreSQL load {pg_load_s:.2f}s), "
                f"files {folder_mb:.0f} MB; new process: Django set-up {child['setup_s']:.2f}s, first view "
                f"{child['load_s']:.3f}s (postings read from PostgreSQL: {child['loaded_postings']}; background checksums "
                f"{child['check_s']:.2f}s more, failed: {child['check_failed']}); first search after a change "
                f"{child['refresh_ms']:.1f} ms (median; worst {child['refresh_max_ms']:.1f} ms)")
            report(rows, args, size, child, fts_index_s, fts_times, fts_by_length, {
                "index_per_s": round(size / index_s, 1), "snapshot_build_s": round(build_s, 2),
                "postgres_load_s": round(pg_load_s, 2), "snapshot_mb": round(folder_mb, 1)})
        if args.tile_to:
            size, copies = sizes[-1], args.tile_to // sizes[-1]
            child, folder_mb = bench_tiled(size, copies, queries, new_docs)
            fts_index_s, fts_times, fts_by_length = (None, None, None) if args.no_baseline else bench_fts(texts * copies, queries)
            log(f"[{size * copies}] tiled: files {folder_mb:.0f} MB; new process: first view {child['load_s']:.3f}s "
                f"(postings read from PostgreSQL: {child['loaded_postings']}); first search after a change "
                f"{child['refresh_ms']:.1f} ms (median; worst {child['refresh_max_ms']:.1f} ms)")
            report(rows, args, size * copies, child, fts_index_s, fts_times, fts_by_length,
                   {"tiled_from": size, "index_per_s": None, "snapshot_mb": round(folder_mb, 1)})
        if args.plot:
            plot(rows, args.plot)
    finally:
        connection.close()
        shutil.rmtree(index_dir, ignore_errors=True)
        admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    main()
