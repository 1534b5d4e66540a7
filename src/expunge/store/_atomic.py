"""Atomic file writes: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

A reader therefore sees either the old file or the complete new one, never a torn write,
even if the process dies or the machine loses power in between. The file gets the mode
``0o666 & ~umask`` (see :mod:`expunge.store._fs`), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from expunge.store._fs import file_mode
from expunge.store._layout import TEMP_SUFFIX


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create ``path`` atomically; ``write(tmp)`` produces the content at a temporary path."""
    atomic_write_many([(path, write)])


def write_all(path: Path, data: bytes | memoryview | Sequence[bytes | memoryview]) -> None:
    """Write ``data`` (or its consecutive parts) to ``path`` (the one place store bytes
    reach the disk; tests patch it)."""
    with open(path, "wb") as handle:
        if isinstance(data, (bytes, bytearray, memoryview)):
            handle.write(data)
        else:
            handle.writelines(data)


def atomic_write_bytes(path: Path,
                       data: bytes | memoryview | Sequence[bytes | memoryview]) -> None:
    atomic_write(path, lambda tmp: write_all(tmp, data))


def atomic_write_parts(files: Sequence[tuple[Path, Sequence[bytes | memoryview]]]) -> None:
    """:func:`atomic_write_bytes` for several files, as one :func:`atomic_write_many`."""
    def writer(parts: Sequence[bytes | memoryview]) -> Callable[[Path], None]:
        # write_all is looked up when called: tests patch it to simulate a full disk
        return lambda tmp: write_all(tmp, parts)

    atomic_write_many([(path, writer(parts)) for path, parts in files])


def atomic_write_many(files: Sequence[tuple[Path, Callable[[Path], object]]]) -> None:
    """Create several files atomically, as one batch: each ``write(tmp)`` produces its
    content at a temporary path, which is synced; then all are renamed, then each folder
    is synced once (not once per file).

    A crash leaves each file absent or complete (temp files are collected on reopen)."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX,
                                            dir=path.parent)
            temps.append((Path(tmp_name), path))
            try:
                os.fchmod(fd, file_mode())
            finally:
                os.close(fd)
            write(Path(tmp_name))
        for tmp, _ in temps:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
        for folder in sorted({path.parent for _, path in temps}):
            fsync_dir(folder)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
