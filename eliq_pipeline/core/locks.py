"""One exclusive, crash-safe lock per file: `eliq materialize` holds one per $ELIQ_HOME, `eliq score`
one per --out.

An `flock` on `<path>`, holding the holder's pid: the kernel drops it when its process dies
(SIGKILL included), so there are no stale locks to clear. The file is removed on release while
still locked; whoever then gets a lock on the removed file takes the file now at that path instead.
Hand-written because `filelock` neither records the holder nor removes its file safely.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX (Windows): nothing is serialised there
    fcntl = None  # type: ignore[assignment]


class LockBusy(RuntimeError):
    """The lock is held by another process (its pid in `holder`) and the caller would not wait."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by pid {holder}")
        self.path, self.holder = path, holder


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def exclusive_lock(path: str | Path, wait: bool = True,
                   on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of `path`. Held elsewhere: raise `LockBusy`, or with `wait` call `on_wait`
    once with the holder's pid and block until it is free."""
    if fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    raise LockBusy(path, holder) from None
                if not waited and on_wait is not None:
                    on_wait(holder)
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The previous holder removes the file on release: a lock on a removed file guards
            # nothing, so lock the file now at that path instead.
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            path.unlink()  # while still locked: no other process can hold this file now
        except FileNotFoundError:
            pass
        os.close(fd)
