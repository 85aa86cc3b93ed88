"""Row access to feature arrays that are never copied whole: rows of a memory-mapped ``.npy``
read from its file (not through the map), lazy row views and the release of mapped pages."""

from __future__ import annotations

import mmap

import numpy as np

from vlmsteer.errors import input_error


def take_rows(z, rows) -> np.ndarray:
    """``z[rows]`` as an array. The rows of a memory-mapped file are read from the file, a run of
    consecutive rows at a time, not through the map: each page fault on the map also maps its
    neighbours (the kernel's fault-around), so reading 8 % of a file's rows at random made nearly
    all of the file resident in this process."""
    rows = np.asarray(rows, dtype=np.int64)
    mapped = isinstance(z, np.memmap) and isinstance(z.base, mmap.mmap) and z.filename  # (not a view of one)
    if not (mapped and rows.ndim == 1 and z.ndim == 2 and z.flags.c_contiguous and len(rows)
            and rows.min() >= 0 and rows.max() < len(z)):
        return np.asarray(z[rows])
    out = np.empty((len(rows), z.shape[1]), dtype=z.dtype)
    row_bytes = z.shape[1] * z.dtype.itemsize
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    ends = np.append(np.flatnonzero(np.diff(rows) != 1) + 1, len(rows))
    with open(z.filename, "rb", buffering=0) as f:
        start = 0
        for end in ends.tolist():
            f.seek(z.offset + int(rows[start]) * row_bytes)
            want = buffer[start * row_bytes:end * row_bytes]
            if f.readinto(want) != len(want):
                raise input_error(z.filename, "is shorter than its header says (truncated?)")
            start = end
    return out


def float64_rows(z, chunk: int):
    """``(start, rows)`` over ``z`` in chunks of ``chunk`` rows, each as float64 (no float64
    copy of the whole array)."""
    for i in range(0, len(z), chunk):
        yield i, np.asarray(z[i:i + chunk], dtype=np.float64)


class LazyRows:
    """A 2-D array read on demand (by slice or index array), never copied whole: subclasses
    say its ``shape``, ``dtype`` and how rows are read (``__getitem__``), and release the pages
    of the files they read (``release``)."""

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def release(self) -> None:
        pass


class Rows(LazyRows):
    """The rows ``index`` of a 2-D array (memory-mapped features are never copied whole): a
    train or held-out split of a store."""

    def __init__(self, array, index):
        self.array, self.index = array, np.sort(np.asarray(index, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.index), self.array.shape[1]

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key) -> np.ndarray:
        return take_rows(self.array, self.index[key])

    def release(self) -> None:
        release_pages(self.array)


def release_pages(z) -> None:
    """Unmap the pages a memory-mapped feature file brought into this process (they stay in the
    OS page cache, and come back on the next read): resident memory holds the rows in use, not
    every row read so far."""
    if isinstance(z, LazyRows):
        z.release()
        return
    mm = getattr(z, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)
