"""Rows written in bulk: COPY on PostgreSQL, bulk_create elsewhere.

Django's bulk_create builds a model instance and prepares every value of every row in Python; for
the thousands of rows a search-index rebuild or a captioned batch of photos writes (each photo has
a few hundred tags and postings), that costs far more than the database's own work. COPY sends the
rows as text.
"""

import io
import re
import threading

from django.db import connection


class BulkWriter:
    """Rows written in batches: COPY on PostgreSQL, bulk_create elsewhere.

    On PostgreSQL each COPY runs on a helper thread, on the transaction's own connection, while
    the caller analyses the next batch: psycopg2 lets go of the GIL while the server parses and
    indexes the rows, so on two cores the server's share of a rebuild hides behind the Python
    analysis. At most one COPY is in flight (the next one waits for it); finish() waits for the
    last and raises its error, if any, so that the transaction rolls back.
    """

    def __init__(self):
        self.copy = connection.vendor == "postgresql"
        self._thread = None
        self._error = None

    def write(self, model, columns: tuple[str, ...], rows: list[tuple], free_text: bool = False) -> None:
        """free_text: some values may hold characters that COPY's text format must escape. bytes go to bytea columns."""
        if not rows:
            return
        if not self.copy:
            model.objects.bulk_create([model(**dict(zip(columns, row))) for row in rows], batch_size=2_000)
            return
        field = copy_escape if free_text else _copy_plain
        self._send(model, columns, "".join("\t".join(map(field, row)) + "\n" for row in rows))

    def write_lines(self, model, columns: tuple[str, ...], lines: list[str]) -> None:
        """Rows already in COPY's text format, one "\\t"-separated line each (free text through copy_escape)."""
        if not lines:
            return
        if not self.copy:
            self.write(model, columns, [[_copy_unescape(value) for value in line[:-1].split("\t")] for line in lines])
            return
        self._send(model, columns, "".join(lines))

    def _send(self, model, columns, text: str) -> None:
        self.finish()
        sql = f"COPY {model._meta.db_table} ({', '.join(columns)}) FROM STDIN"
        raw = connection.connection  # thread-safe in psycopg2; the caller does not use it meanwhile
        self._thread = threading.Thread(target=self._copy, args=(raw, sql, text.encode()), name="searchindex-copy")
        self._thread.start()

    def _copy(self, raw, sql: str, data: bytes) -> None:
        try:
            with raw.cursor() as cursor:
                # One read of the whole batch: in 8 kB reads each would wait for the GIL (held by
                # the analysing thread) for up to the 5 ms switch interval.
                cursor.copy_expert(sql, io.BytesIO(data), size=len(data))
        except BaseException as exc:  # raised again by finish(), in the caller's thread
            self._error = exc

    def finish(self) -> None:
        """Wait for the COPY in flight, if any; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _copy_plain(value) -> str:
    """A number, or bytes in bytea's hex form (its backslash doubled, as COPY's text format wants)."""
    return "\\\\x" + value.hex() if isinstance(value, bytes) else str(value)


_COPY_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def _copy_unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _COPY_UNESCAPES.get(m.group(1), m.group(1)), text) if "\\" in text else text


def copy_escape(value) -> str:
    """A value as COPY's text format must spell it (for write_lines: free text such as a word)."""
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
