"""File modes that respect the umask, and OS errors turned into one-line :class:`StoreError`.

Every file a store creates gets ``0o666 & ~umask`` (temp files start as 0600 and are
``fchmod``-ed before the rename), the mode any ordinary program would give it: with umask
``0o077`` a store is private to its owner, with ``0o007`` (and a setgid group directory) a
team shares it. Folders are created with ``mkdir``'s default, ``0o777 & ~umask``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from expunge.exceptions import StoreError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where the OS allows (Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (briefly visible to other threads)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new store file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


_HINTS = {
    errno.ENOSPC: "the disk is full: free space and retry (nothing was committed)",
    errno.EDQUOT: "the disk quota is exceeded: free space and retry (nothing was committed)",
    errno.EFBIG: "the file size limit was reached: raise it (ulimit -f) and retry",
    errno.EROFS: "the file system is read-only: copy the store to writable storage to change it",
    errno.EACCES: "permission denied: check the store's owner, group and modes "
                  "(see docs/guarantees.md, 'Sharing a store')",
    errno.EPERM: "permission denied: check the store's owner, group and modes",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another store path",
    errno.EISDIR: "a folder is in the way of a store file: the store is damaged",
    errno.ENOENT: "a file or folder is missing: the store is incomplete or was moved",
}


def describe(err: OSError) -> str:
    """``strerror`` plus what to do about it."""
    hint = _HINTS.get(err.errno or -1)
    text = err.strerror or str(err)
    return f"{text} ({hint})" if hint else text


@contextlib.contextmanager
def os_errors(action: str, path: Path | str) -> Iterator[None]:
    """Re-raise an ``OSError`` inside the block as :class:`StoreError` naming ``path``."""
    try:
        yield
    except StoreError:
        raise
    except OSError as err:
        raise StoreError(f"Cannot {action} {str(path)!r}: {describe(err)}.") from err


def sqlite_message(err: sqlite3.Error) -> str:
    """A short explanation of an SQLite error, with the fix where there is one."""
    text = str(err)
    lowered = text.lower()
    if "full" in lowered:
        return f"{text} (free space and retry; nothing was committed)"
    if "readonly" in lowered or "read-only" in lowered:
        return f"{text} (the store is read-only for this user: check its modes)"
    if "not a database" in lowered or "malformed" in lowered:
        return f"{text} (the database file is corrupted or is not an expunge store)"
    if "locked" in lowered or "busy" in lowered:
        return f"{text} (another program holds the database: retry when it is done)"
    return text


@contextlib.contextmanager
def sqlite_errors(action: str, path: Path | str) -> Iterator[None]:
    """Re-raise an ``sqlite3.Error`` (or ``OSError``) as :class:`StoreError` naming ``path``."""
    try:
        yield
    except sqlite3.Error as err:
        raise StoreError(f"Cannot {action} {str(path)!r}: {sqlite_message(err)}.") from err
    except StoreError:
        raise
    except OSError as err:
        raise StoreError(f"Cannot {action} {str(path)!r}: {describe(err)}.") from err
