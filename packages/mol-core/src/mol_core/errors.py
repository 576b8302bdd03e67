"""The error hierarchy shared by every mol package.

    MolError
    ├── ConfigError      an inconsistent or out-of-range configuration value
    ├── ShapeError       a tensor whose shape (or dtype) is not what the call expects
    └── ArtifactError    a manifest, bundle or index file that is missing, corrupt or of another version

``ConfigError`` and ``ShapeError`` also derive from :class:`ValueError`, so code written against the
standard library's conventions (``except ValueError``) keeps working. Other packages subclass these
(for example mol-serve's request errors) instead of inventing parallel hierarchies.
"""

from __future__ import annotations

__all__ = ["ArtifactError", "ConfigError", "MolError", "ShapeError"]


class MolError(Exception):
    """Base class of every error raised on purpose by a mol package."""


class ConfigError(MolError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class ShapeError(MolError, ValueError):
    """A tensor argument has the wrong shape or dtype; the message names the expected shape."""


class ArtifactError(MolError):
    """An artifact on disk (manifest, bundle, index) is missing, corrupt or of an unsupported version."""
