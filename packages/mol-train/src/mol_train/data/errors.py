"""Errors raised by the data pipeline, all under mol-core's :class:`~mol_core.errors.MolError`.

MolError
├── DataError (also a ValueError)   a data set that cannot be used: empty, too small, unknown ids
│   └── DataFormatError             a raw data file with a malformed line (names file and line)
├── ArtifactError                   a prepared data set file that is corrupt or of another version
└── DownloadError (also an OSError) a public data set that could not be downloaded or verified
"""

from __future__ import annotations

import os

from mol_core.errors import MolError

__all__ = ["DataError", "DataFormatError", "DownloadError"]


class DataError(MolError, ValueError):
    """A data set cannot be used as given (empty, too small, an id outside the vocabulary, ...)."""


class DataFormatError(DataError):
    """A raw data file has a malformed line; the message names the file, the line and what was expected.

    Attributes:
        path: the file.
        line: the 1-based line number.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        super().__init__(f"{self.path}, line {line}: {message}")


class DownloadError(MolError, OSError):
    """A public data set could not be downloaded, verified or extracted."""
