"""Rows of a memory-mapped ``.npy`` read from its file, not through the map."""

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
