"""Rows written in bulk: COPY on PostgreSQL, bulk_create elsewhere.

Django's bulk_create builds a model instance and prepares every value of every row in Python; for
the thousands of rows a search-index rebuild or a captioned batch of photos writes (each photo has
a few hundred tags and postings), that costs far more than the database's own work. COPY sends the
rows as text, or in its binary format where they hold packed arrays (bytes).
"""

import io
import re
import struct
import threading
from dataclasses import dataclass

import numpy as np
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
        """free_text: some values may hold characters that COPY's text format must escape."""
        if not rows:
            return
        if not self.copy:
            model.objects.bulk_create([model(**dict(zip(columns, row))) for row in rows], batch_size=2_000)
            return
        field = copy_escape if free_text else str
        self._send(model, columns, "".join("\t".join(map(field, row)) + "\n" for row in rows).encode())

    def write_binary(self, model, columns: tuple[str, ...], values: tuple) -> None:
        """Rows through COPY's binary format, given column by column: each column an int64 or int32
        NumPy array (PostgreSQL int8, int4) or PackedValues (bytea).

        For rows of packed arrays: the text format would need them spelled in hex, twice their
        size, for this process to write and the server to parse. Column by column, Python handles
        no value: the fixed-width fields are packed for all rows at once by NumPy, and each row
        is a few slices of those and of the bytea columns' data, joined.
        """
        rows = len(values[0])
        if not rows:
            return
        if not self.copy:
            self.write(model, columns, list(zip(*(value.values() if isinstance(value, PackedValues) else value.tolist()
                                                  for value in values))))
            return
        pieces = []  # per row in turn, each a list of every row's piece
        fixed = [(">i2", len(columns))]  # the fields between two bytea values, and the length of the second
        for value in values:
            if isinstance(value, PackedValues):
                fixed.append((">i4", np.diff(value.ends, prepend=0)))
                pieces += [_fixed_pieces(fixed, rows), _slices(value.data, value.ends)]
                fixed = []
            else:
                fixed += [(">i4", value.dtype.itemsize), (value.dtype.newbyteorder(">"), value)]
        if fixed:
            pieces.append(_fixed_pieces(fixed, rows))
        data = [_BINARY_HEADER, *[None] * (rows * len(pieces)), _BINARY_TRAILER]
        for k, row_pieces in enumerate(pieces):
            data[1 + k : -1 : len(pieces)] = row_pieces
        self._send(model, columns, b"".join(data), binary=True)

    def write_lines(self, model, columns: tuple[str, ...], lines: list[str]) -> None:
        """Rows already in COPY's text format, one "\\t"-separated line each (free text through copy_escape)."""
        if not lines:
            return
        if not self.copy:
            self.write(model, columns, [[_copy_unescape(value) for value in line[:-1].split("\t")] for line in lines])
            return
        self._send(model, columns, "".join(lines).encode())

    def _send(self, model, columns, data: bytes, binary: bool = False) -> None:
        self.finish()
        sql = f"COPY {model._meta.db_table} ({', '.join(columns)}) FROM STDIN" + (" (FORMAT binary)" if binary else "")
        raw = connection.connection  # thread-safe in psycopg2; the caller does not use it meanwhile
        self._thread = threading.Thread(target=self._copy, args=(raw, sql, data), name="searchindex-copy")
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


# COPY's binary format: a signature, flags and extension length; per row the number of fields,
# then each field's length and bytes (integers big-endian); -1 at the end.
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = struct.pack(">h", -1)


@dataclass(frozen=True)
class PackedValues:
    """A bytea column's values, row after row: row k's value is data[ends[k - 1]:ends[k]] (from 0 for the first)."""

    data: bytes
    ends: np.ndarray  # int64 [rows]

    def __len__(self) -> int:
        return len(self.ends)

    def values(self) -> list[bytes]:
        return list(map(bytes, _slices(self.data, self.ends)))


def _fixed_pieces(fields: list[tuple], rows: int) -> list[memoryview]:
    """Fixed-width fields (dtype, a value for every row or one for all) packed for all rows, one piece per row."""
    record = np.empty(rows, dtype=[(f"f{k}", dtype) for k, (dtype, _) in enumerate(fields)])
    for k, (_, value) in enumerate(fields):
        record[f"f{k}"] = value
    width = record.dtype.itemsize
    return _slices(record.tobytes(), np.arange(width, width * rows + 1, width))


def _slices(data: bytes, ends: np.ndarray) -> list[memoryview]:
    """data[ends[k - 1]:ends[k]] for every k (from 0 for the first), as views."""
    view = memoryview(data)
    ends = ends.tolist()
    return list(map(view.__getitem__, map(slice, [0, *ends[:-1]], ends)))


_COPY_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def _copy_unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _COPY_UNESCAPES.get(m.group(1), m.group(1)), text) if "\\" in text else text


def copy_escape(value) -> str:
    """A value as COPY's text format must spell it (for write_lines: free text such as a word)."""
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
