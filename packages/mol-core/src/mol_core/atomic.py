"""Writing a file so that readers see the old content or the new, never half of it.

One helper for every package: the content goes to a temporary file in the same folder, is flushed and
fsync-ed, then renamed over the target (``os.replace``, atomic on POSIX and Windows); on any error the
temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "write_bytes_atomically", "write_text_atomically"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary handle whose content replaces ``path`` when the ``with`` block ends without an error.

    The folder must exist. The file gets permissions ``mode`` (``mkstemp`` alone would leave 0o600).
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes | Callable[[IO[bytes]], object]) -> Path:
    """Writes ``data`` (bytes, or a function that writes to the handle) to ``path`` atomically."""
    with atomic_open(path) as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data)
    return Path(path)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` as UTF-8 with ``\\n`` line ends to ``path`` atomically."""
    return write_bytes_atomically(path, text.encode("utf-8"))
