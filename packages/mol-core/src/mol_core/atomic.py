"""Writing a file or a folder so that readers see the old content or the new, never half of it.

One helper for every package: the content goes to a temporary file in the same folder, is flushed and
fsync-ed, then renamed over the target (``os.replace``, atomic on POSIX and Windows); on any error the
temporary file is removed and the target is untouched. A folder (a data set, a bundle, an index) is
built in a staging folder beside its target and swapped in by :func:`replace_directory`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "replace_directory", "write_bytes_atomically", "write_text_atomically"]


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


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Renames the finished folder ``staging`` to ``target`` (same parent folder); returns ``target``.

    An existing ``target`` is renamed aside first and removed only after ``staging`` took its place; if
    that last rename fails, the old ``target`` is put back. Readers see the old folder or the new one
    (between the two renames, for an instant, none).

    Raises:
        OSError: a rename failed (``staging`` is left as it was; the caller removes it).
    """
    staged, final = Path(staging), Path(target)
    if not final.exists():
        os.rename(staged, final)
        return final
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
    aside.rmdir()
    os.rename(final, aside)
    try:
        os.rename(staged, final)
    except BaseException:
        os.rename(aside, final)
        raise
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    return final
