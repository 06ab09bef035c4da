"""Atomic file writes: a reader never sees a half-written file.

Every writer goes to a temporary file in the same directory, fsyncs it, then renames it
over the target (rename is atomic on POSIX within one file system). :class:`ParquetSink`
does the same for a table streamed in row groups over a whole run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable (fsync the directory itself)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. some network file systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0o666 minus the process umask: what open() would give a new file."""
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], *, binary: bool = True,
                 fsync: bool = True) -> Path:
    """Call ``writer(fileobj)`` on a temp file next to ``path`` and rename it into place.

    On any error the temp file is removed and the target is left as it was. ``fsync=False``
    skips the flush to disk (still atomic for readers and for a killed process; the caller
    then makes it durable in batches, e.g. the dataset recorder's checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:  # mkstemp makes 0600 files; give the file the mode a plain open() would
        os.fchmod(fd, _default_mode())
    except OSError:  # pragma: no cover - file systems without modes
        pass
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            writer(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


def atomic_write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """An (H, W, 3) uint8 RGB image as a PNG file (OpenCV encodes it; written atomically)."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {np.shape(rgb)} image as PNG for {path}")
    return atomic_write_bytes(path, png.tobytes())


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and dataclass-like objects into JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


class ParquetSink:
    """A Parquet table streamed in row groups, renamed into place (fsynced) when closed.

    ``columns`` is a sequence of ``(name, pyarrow type name)`` pairs, e.g.
    ``(("frame", "int64"), ("x", "float64"))``. :meth:`add` takes one dict of equal-length
    numpy arrays per call; rows are buffered and written as one row group every
    ``rows_per_group`` rows (zstd). Rows go to ``.NAME.tmp`` beside ``path``; :meth:`close`
    (idempotent) writes the rest, fsyncs the file, renames it over ``path`` and fsyncs the
    directory, so a reader sees no file or the whole one. ``rows`` and ``row_groups`` count
    what was written.
    """

    def __init__(self, path: str | os.PathLike, columns, *, rows_per_group: int = 100_000,
                 compression: str = "zstd"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
        self.rows_per_group = max(1, int(rows_per_group))
        self.rows = 0
        self.row_groups = 0
        self.closed = False
        self._parts: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression=compression)

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """Buffer one batch of rows: every schema column, equal lengths."""
        n = len(next(iter(columns.values()))) if columns else 0
        if n == 0:
            return
        self._parts.append(columns)
        self._buffered += n
        if self._buffered >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self._parts or self._writer is None:
            return
        import pyarrow as pa

        arrays = [pa.array(np.concatenate([np.asarray(p[f.name]) for p in self._parts]), type=f.type)
                  for f in self.schema]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows
        self.row_groups += 1
        self._parts, self._buffered = [], 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            self._writer.close()
            self._writer = None
            with open(self._tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
