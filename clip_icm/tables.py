"""A user's tables (CSV, JSONL, Parquet), read strictly: every problem with the file as a whole
(not a file, an unknown format, not UTF-8, empty, a missing column, a row with more or fewer
fields than the header) is one :class:`InvalidInput` line naming the file, and the rows come back
as text, each with the line it came from, for the reports of the readers built on this
(caption pairs, image pairs, data set manifests). What a *row* may hold is theirs to judge.
"""
from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clip_icm.errors import InvalidInput
from clip_icm.hashing import digest

FORMATS = {".csv": "CSV", ".jsonl": "JSONL", ".parquet": "Parquet"}
# A table is read whole into memory: past this it is more likely a wrong file than a manifest
# (a million rows of paths is about 100 MB of CSV).
MAX_TABLE_BYTES = 1 << 30


@dataclass(frozen=True)
class Table:
    """A table's rows as text (each cell stripped; a missing or null optional cell is "").

    digest: sha256 of the file's bytes (keys built from the table change when it does)
    lines:  where each row came from: its line in a CSV or JSONL file, its row number (from 1)
            in a Parquet file
    """

    path: Path
    digest: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    lines: tuple[int, ...]

    def where(self, i: int) -> str:
        """Row ``i`` for a report: ``file.csv:12``."""
        return f"{self.path}:{self.lines[i]}"


def table_format(path: str | os.PathLike) -> str | None:
    """The format a file's suffix names ("CSV", "JSONL", "Parquet"), or None."""
    return FORMATS.get(Path(path).suffix.lower())


def read_table(path: str | os.PathLike, required: Sequence[str], optional: Sequence[str] = (),
               what: str = "table") -> Table:
    """The rows of the table at ``path`` with the ``required`` columns (and ``optional`` ones when
    present; other columns are kept too). ``what`` names the file in messages ("caption pairs")."""
    path = Path(path)
    fmt = table_format(path)
    if fmt is None:
        raise InvalidInput(f"{what} file {str(path)!r}: unknown format {path.suffix or '(no suffix)'!r}; "
                           f"use {', '.join(FORMATS)}")
    raw = _read_bytes(path, what)
    if not raw.strip():
        raise InvalidInput(f"{what} file {str(path)!r} is empty")
    reader = {"CSV": _csv_rows, "JSONL": _jsonl_rows, "Parquet": _parquet_rows}[fmt]
    columns, rows, lines = reader(raw, path, what)
    absent = [c for c in required if c not in columns]
    if absent:
        raise InvalidInput(f"{what} file {str(path)!r} lacks the column(s) {', '.join(absent)}; "
                           f"it has: {', '.join(columns) or '(none)'}")
    if not rows:
        raise InvalidInput(f"{what} file {str(path)!r} has a header but no rows")
    nul = next((i for i, row in enumerate(rows) if any("\x00" in v for v in row.values())), None)
    if nul is not None:  # no path or caption holds one; a file that does is binary, or damaged
        raise InvalidInput(f"{what} file {str(path)!r}: line {lines[nul]} holds a NUL character")
    rows = [{**{c: "" for c in optional}, **row} for row in rows]
    return Table(path, digest(raw), tuple(columns), tuple(rows), tuple(lines))


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        info = path.stat()
    except OSError as e:
        raise InvalidInput(f"{what} file {str(path)!r} cannot be read: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{what} file {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the reader forever
        raise InvalidInput(f"{what} file {str(path)!r} is not a regular file")
    if info.st_size > MAX_TABLE_BYTES:
        raise InvalidInput(f"{what} file {str(path)!r} is {info.st_size:,} bytes, over the limit of "
                           f"{MAX_TABLE_BYTES:,}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"{what} file {str(path)!r} cannot be read: {e.strerror or e}") from None


def _text(raw: bytes, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # the BOM spreadsheet programs write is not part of the first column's name
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{what} file {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _header(names: Sequence[str], path: Path, what: str) -> list[str]:
    columns = [str(n).strip() for n in names]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise InvalidInput(f"{what} file {str(path)!r} names the column(s) {', '.join(twice)} more than once")
    return columns


def _csv_rows(raw: bytes, path: Path, what: str) -> tuple[list[str], list[dict], list[int]]:
    reader = csv.reader(io.StringIO(_text(raw, path, what), newline=""))
    try:
        header = next(reader)
        columns = _header(header, path, what)
        rows, lines = [], []
        for cells in reader:
            if not any(c.strip() for c in cells):  # blank lines separate nothing
                continue
            if len(cells) != len(columns):
                raise InvalidInput(f"{what} file {str(path)!r}: line {reader.line_num} has {len(cells)} fields, "
                                   f"the header has {len(columns)}")
            rows.append({c: v.strip() for c, v in zip(columns, cells)})
            lines.append(reader.line_num)
    except csv.Error as e:
        raise InvalidInput(f"{what} file {str(path)!r} is not valid CSV (line {reader.line_num}): {e}") from None
    return columns, rows, lines


def _cell(value: object) -> str:
    return "" if value is None else str(value).strip()


def _jsonl_rows(raw: bytes, path: Path, what: str) -> tuple[list[str], list[dict], list[int]]:
    """Each non-blank line one JSON object; the columns are those of the first (every row must
    have the same keys, as every CSV row has the header's fields)."""
    columns: list[str] | None = None
    rows, lines = [], []
    for number, line in enumerate(_text(raw, path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise InvalidInput(f"{what} file {str(path)!r}: line {number} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise InvalidInput(f"{what} file {str(path)!r}: line {number} is not a JSON object")
        if columns is None:
            columns = _header(list(obj), path, what)
        elif set(obj) != set(columns):
            raise InvalidInput(f"{what} file {str(path)!r}: line {number} has the keys {', '.join(obj)}, "
                               f"the first line {', '.join(columns)}")
        rows.append({c: _cell(obj[c]) for c in columns})
        lines.append(number)
    return columns or [], rows, lines


def _parquet_rows(raw: bytes, path: Path, what: str) -> tuple[list[str], list[dict], list[int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInput(f"{what} file {str(path)!r} is not a readable Parquet file: {e}") from None
    columns = _header(table.column_names, path, what)
    values = {c: table.column(i).to_pylist() for i, c in enumerate(columns)}
    rows = [{c: _cell(values[c][i]) for c in columns} for i in range(table.num_rows)]
    return columns, rows, list(range(1, table.num_rows + 1))
