"""One writer at a time: OS file locks on a store, released by the OS if the holder dies.

A directory store has two lock files (``flock``, advisory, per open file description):

* ``write.lock``, **exclusive**, held by every mutating operation for its whole duration
  (``fit``, ``forget``, the crash recovery of ``expunge.open``, a cache write): two writers
  never interleave, and a writer always plans on the latest committed state;
* ``read.lock``, **shared** by readers while they load or verify the committed state, and
  taken **exclusively** by the writer only to delete the blobs its commit made stale (the
  purge), so that a reader never sees a committed state whose files are being deleted.
  Readers never wait for a writer's training, only for its purge (milliseconds).

Both are re-entrant for the handle that holds them (a service can hold the write lock
across requests with ``strategy.locked()``). Waiting is polled (20-200 ms steps), so it
takes a ``timeout`` and reports, once, who holds the lock (pid, host, operation, since),
as written into ``write.lock`` by its holder. ``flock`` works on local file systems and on
NFS v4 (Linux emulates it with byte-range locks there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from expunge.exceptions import StoreError, StoreLockedError
from expunge.store._fs import describe, file_mode

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: a waiter reports who holds the lock after this many seconds
NOTICE_AFTER = 0.5

WaitNotice = Callable[[str], None]


class FileLock:
    """An ``flock`` on one file, shared or exclusive, re-entrant for this object.

    Args:
        path: the lock file (created with the umask's mode if missing).
        what: how messages name the lock ("the write lock of store 'runs/s'").
        record_holder: write who holds it (pid, host, operation, time) into the file, so that
            a waiting process can say whom it waits for.
    """

    def __init__(self, path: Path, what: str, *, record_holder: bool = False) -> None:
        self.path = path
        self.what = what
        self.record_holder = record_holder
        self._guard = threading.RLock()  # threads sharing this handle take turns
        self._fd: int | None = None
        self._depth = 0
        self._shared = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (in either mode)."""
        return self._depth > 0

    @property
    def held_exclusive(self) -> bool:
        return self._depth > 0 and not self._shared

    def _open(self, shared: bool) -> int | None:
        """The lock file's descriptor; ``None`` if a shared lock cannot be taken at all
        (a read-only store without a lock file: no writer can change it through us)."""
        flags = os.O_RDWR | os.O_CREAT
        try:
            return os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), file_mode())
        except OSError as err:
            if shared:
                try:
                    return os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError:
                    return None
            raise StoreError(
                f"Cannot take {self.what} ({str(self.path)!r}): {describe(err)}. Writing to a "
                "store needs write access to its folder."
            ) from err

    def holder(self) -> str:
        """Who holds the lock, as its holder recorded it ("" if unknown)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return ""
        if not isinstance(info, dict) or "pid" not in info:
            return ""
        return (f"held by pid {info.get('pid')} on {info.get('host', '?')} "
                f"({info.get('operation', '?')} since {info.get('since', '?')})")

    def _write_holder(self, fd: int, operation: str) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "operation": operation,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):  # only informative
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)

    @contextlib.contextmanager
    def hold(self, *, shared: bool = False, timeout: float | None = None,
             on_wait: WaitNotice | None = None, operation: str = "") -> Iterator[bool]:
        """Hold the lock for the block; yields whether a lock was actually taken.

        Raises:
            StoreLockedError: another process held it for more than ``timeout`` seconds.
        """
        if timeout is not None and timeout < 0:
            raise StoreError(f"timeout must be None or >= 0 seconds; got {timeout!r}.")
        if not self._guard.acquire(timeout=-1 if timeout is None else max(timeout, 0.001)):
            raise StoreLockedError(
                f"Gave up after {timeout} s: another thread of this process uses this store "
                "handle. Use one handle per thread, or a longer timeout."
            )
        try:
            if self._depth > 0:
                if self._shared and not shared:
                    raise StoreError(f"{self.what}: cannot upgrade a shared lock to exclusive")
                self._depth += 1
                try:
                    yield True
                finally:
                    self._depth -= 1
                return
            taken = self._acquire(shared, timeout, on_wait, operation)
            try:
                yield taken
            finally:
                self._release()
        finally:
            self._guard.release()

    def _acquire(self, shared: bool, timeout: float | None, on_wait: WaitNotice | None,
                 operation: str) -> bool:
        if fcntl is None:  # pragma: no cover - Windows
            raise StoreError("Store locking needs POSIX file locks (Linux, macOS).")
        fd = self._open(shared)
        if fd is None:
            return False
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        started = time.monotonic()
        pause, noticed = 0.02, False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as err:
                os.close(fd)
                raise StoreError(f"Cannot take {self.what}: {describe(err)}.") from err
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                holder = self.holder()
                os.close(fd)
                raise StoreLockedError(
                    f"Gave up waiting for {self.what} after {timeout:g} s"
                    f"{': ' + holder if holder else ''}. Retry later, or pass a longer "
                    "timeout (None waits)."
                )
            if on_wait is not None and not noticed and waited >= NOTICE_AFTER:
                noticed = True
                holder = self.holder()
                on_wait(f"waiting for {self.what}{' ' + holder if holder else ''}"
                        f"{'' if timeout is None else f' (for at most {timeout:g} s)'}")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.2)
        self._fd, self._depth, self._shared = fd, 1, shared
        if self.record_holder and not shared:
            self._write_holder(fd, operation)
        return True

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        self._depth = 0
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if self.record_holder and not self._shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ThreadLock:
    """The same interface for an in-memory store: a re-entrant lock between threads."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.RLock()
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    @property
    def held_exclusive(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def hold(self, *, shared: bool = False, timeout: float | None = None,
             on_wait: WaitNotice | None = None, operation: str = "") -> Iterator[bool]:
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise StoreLockedError(
                f"Gave up waiting for {self.what} after {timeout:g} s: another thread of this "
                "process is using it."
            )
        self._depth += 1
        try:
            yield True
        finally:
            self._depth -= 1
            self._lock.release()
