"""Search-index benchmark: bulk indexing throughput and query latency, against PostgreSQL's own FTS.

For each size it generates captions with Flickr8k's word statistics (a word-trigram model of the
real captions in ../shared), bulk-indexes them with searchindex.index.rebuild() in a scratch
PostgreSQL database (`imagesearch_search_bench`, dropped afterwards), then times 1-, 2- and 4-word
queries (common words such as "man" and "dog" included) through searchindex.index.search(), top
20 of the ranked results. The baseline indexes the same rows as a tsvector column with a GIN index
and answers the same queries (any word, as ours) ranked by ts_rank, top 20.

    python bench/search_bench.py --sizes 10000,100000,1000000 [--json] [--plot docs/search_bench.png]

With --json each engine and size gives one line on stdout:
    {"size": N, "engine": "imagesearch" | "postgres-fts", "index_per_s": ..., "p50_ms": ..., "p95_ms": ...}
Details (snapshot load time, cost of the first search after a change, p95 per query length) go to
stderr.
"""
import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = "imagesearch_search_bench"
CAPTIONS = ROOT.parent / "shared" / "datasets" / "flickr8k" / "captions.txt"
QUERIES_PER_LENGTH = 60
COMMON = ["man", "dog", "man dog", "a man and a dog", "people", "red shirt", "two dogs playing", "woman in a red dress"]
TOP = 20


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


def make_queries(captions: list[str], rng: random.Random) -> dict[int, list[str]]:
    """Queries of 1, 2 and 4 words taken from the captions, plus common-word queries."""
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


def bench_imagesearch(captions, queries):
    from searchindex import index as si

    started = time.perf_counter()
    si.rebuild(enumerate(captions, start=1))
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    si.search("warm up")
    load_s = time.perf_counter() - started
    times, by_length = [], {}
    for length, group in queries.items():
        for query in group[:3]:
            si.search(query, per_page=TOP)
        part = []
        for query in group:
            t = time.perf_counter()
            si.search(query, per_page=TOP)
            part.append((time.perf_counter() - t) * 1000)
        by_length[length] = percentiles(part)
        times += part
    # The cost of keeping norms exact: the first search after a change recomputes them.
    si.index_document(len(captions) + 1, "a dog jumps over a red fence")
    t = time.perf_counter()
    si.search("dog", per_page=TOP)
    refresh_ms = (time.perf_counter() - t) * 1000
    return index_s, load_s, refresh_ms, times, by_length


def bench_fts(captions, queries):
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_fts")
        cur.execute(
            "CREATE TABLE bench_fts (id bigint PRIMARY KEY, caption text NOT NULL, "
            "tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', caption)) STORED)"
        )
        started = time.perf_counter()
        buffer = io.StringIO("".join(f"{i}\t{c}\n" for i, c in enumerate(captions, start=1)))
        cur.cursor.copy_expert("COPY bench_fts (id, caption) FROM STDIN", buffer)
        cur.execute("CREATE INDEX bench_fts_tsv ON bench_fts USING gin (tsv)")
        index_s = time.perf_counter() - started
        cur.execute("ANALYZE bench_fts")
        sql = (
            "SELECT id, ts_rank(tsv, q) AS rank FROM bench_fts, websearch_to_tsquery('english', %s) q "
            "WHERE tsv @@ q ORDER BY rank DESC, id LIMIT %s"
        )
        times, by_length = [], {}
        for length, group in queries.items():
            for query in group[:3]:
                cur.execute(sql, (" or ".join(query.split()), TOP))
                cur.fetchall()
            part = []
            for query in group:
                t = time.perf_counter()
                cur.execute(sql, (" or ".join(query.split()), TOP))  # any word, as imagesearch
                cur.fetchall()
                part.append((time.perf_counter() - t) * 1000)
            by_length[length] = percentiles(part)
            times += part
        cur.execute("DROP TABLE bench_fts")
    return index_s, times, by_length


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_latency, ax_index) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, style, color in (("imagesearch", "o-", "tab:blue"), ("postgres-fts", "s--", "tab:orange")):
        mine = [r for r in rows if r["engine"] == engine]
        sizes = [r["size"] for r in mine]
        ax_latency.plot(sizes, [r["p95_ms"] for r in mine], style, color=color, label=f"{engine} p95")
        ax_latency.plot(sizes, [r["p50_ms"] for r in mine], style, color=color, alpha=0.35, label=f"{engine} p50")
        ax_index.plot(sizes, [r["index_per_s"] for r in mine], style, color=color, label=engine)
    for ax, title, unit in ((ax_latency, "Query latency", "ms"), (ax_index, "Bulk indexing", "captions / s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("captions")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--json", action="store_true", help="One JSON object per engine and size on stdout.")
    parser.add_argument("--plot", type=Path, help="Write a PNG plot of the results here.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin(f"CREATE DATABASE {DATABASE}")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    rows = []
    try:
        call_command("migrate", "searchindex", verbosity=0)
        model = CaptionModel(CAPTIONS, seed=args.seed)
        rng = random.Random(args.seed)
        for size in sizes:
            started = time.perf_counter()
            captions = [model.sentence() for _ in range(size)]
            log(f"[{size}] generated captions in {time.perf_counter() - started:.1f}s")
            queries = make_queries(captions, rng)
            index_s, load_s, refresh_ms, times, by_length = bench_imagesearch(captions, queries)
            fts_index_s, fts_times, fts_by_length = bench_fts(captions, queries)
            for engine, seconds, t, lengths in (
                ("imagesearch", index_s, times, by_length),
                ("postgres-fts", fts_index_s, fts_times, fts_by_length),
            ):
                p50, p95 = percentiles(t)
                row = {"size": size, "engine": engine, "index_per_s": round(size / seconds, 1),
                       "p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{size:>9} {engine:<13} index {row['index_per_s']:>10,.0f}/s  "
                          f"p50 {p50:8.2f} ms  p95 {p95:8.2f} ms", flush=True)
                log(f"[{size}] {engine}: p50/p95 ms by words per query (0 = common-word set): "
                    + ", ".join(f"{k}: {v[0]:.2f}/{v[1]:.2f}" for k, v in sorted(lengths.items())))
            log(f"[{size}] imagesearch snapshot load {load_s:.2f}s; first search after a change {refresh_ms:.1f} ms")
        if args.plot:
            plot(rows, args.plot)
    finally:
        connection.close()
        admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    main()
