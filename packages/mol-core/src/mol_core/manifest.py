"""Artifact manifests shared by mol-train, mol-index and mol-serve.

A model bundle or an index artifact is a directory holding ``manifest.json`` (a
``mol.v1.ModelBundleManifest`` or ``mol.v1.IndexManifest`` written as protobuf JSON with the ``.proto``
field names) and the files the manifest lists, each pinned by size and SHA-256. This module writes and
reads those manifests and checks the files against them; every failure is an
:class:`~mol_core.errors.ArtifactError` naming the file and what was expected.

Example:
    >>> from mol_core.proto.mol.v1 import manifest_pb2
    >>> root = Path("artifacts/index-exact")
    >>> manifest = manifest_pb2.IndexManifest(format_version=INDEX_FORMAT_VERSION, kind="exact")
    >>> manifest.files.append(file_entry(root / "items.safetensors", root, "index_tensors"))
    >>> write_manifest(manifest, root / MANIFEST_FILENAME)
    >>> loaded = read_manifest(root / MANIFEST_FILENAME, manifest_pb2.IndexManifest, INDEX_FORMAT_VERSION)
    >>> verify_files(loaded, root)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from mol_core.atomic import write_text_atomically
from mol_core.errors import ArtifactError
from mol_core.proto.mol.v1.manifest_pb2 import FileEntry, IndexManifest, ModelBundleManifest

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "INDEX_FORMAT_VERSION",
    "MANIFEST_FILENAME",
    "TEXT_BUNDLE_FORMAT_VERSION",
    "file_entry",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]

#: Layout version of model bundles this mol writes and reads (``ModelBundleManifest.format_version``).
BUNDLE_FORMAT_VERSION = 1
#: Layout version of text model bundles (``query_input = "text"``): a query encoder over token ids and a
#: tokenizer; a reader that knows only history bundles refuses them.
TEXT_BUNDLE_FORMAT_VERSION = 2
#: Layout version of index artifacts this mol writes and reads (``IndexManifest.format_version``).
INDEX_FORMAT_VERSION = 1
#: The manifest's file name inside an artifact directory.
MANIFEST_FILENAME = "manifest.json"

_CHUNK_BYTES = 1 << 20

#: A manifest message type: the ones with a ``format_version`` that :func:`read_manifest` checks.
ManifestT = TypeVar("ManifestT", ModelBundleManifest, IndexManifest)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Returns the SHA-256 of a file's content as 64 lowercase hex characters, reading it in chunks.

    Raises:
        ArtifactError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as err:
        raise ArtifactError(f"cannot read {os.fspath(path)} to checksum it: {err}") from err
    return digest.hexdigest()


def file_entry(
    path: str | os.PathLike[str], root: str | os.PathLike[str], role: str, *, description: str = ""
) -> FileEntry:
    """Describes one file of an artifact directory for a manifest's ``files`` list.

    Args:
        path: the file; it must lie inside ``root``.
        root: the artifact directory; the entry stores ``path`` relative to it, with ``/`` separators.
        role: what the file is for, e.g. ``"query_encoder"`` or ``"item_tensors"``.
        description: optional free text.

    Returns:
        A ``FileEntry`` with the relative path, size in bytes and SHA-256.

    Raises:
        ArtifactError: ``path`` is not a file inside ``root``.
    """
    file = Path(path).resolve()
    base = Path(root).resolve()
    if not file.is_file():
        raise ArtifactError(f"cannot add {os.fspath(path)} to the manifest: it is not an existing file")
    if not file.is_relative_to(base):
        raise ArtifactError(
            f"cannot add {os.fspath(path)} to the manifest: it is not inside the artifact directory "
            f"{os.fspath(root)}; write artifact files under that directory"
        )
    return FileEntry(
        path=file.relative_to(base).as_posix(),
        size_bytes=file.stat().st_size,
        sha256=sha256_file(file),
        role=role,
        description=description,
    )


def write_manifest(message: Message, path: str | os.PathLike[str]) -> None:
    """Writes a manifest as indented protobuf JSON, atomically.

    The JSON uses the ``.proto`` field names, sorted keys and prints fields left at their defaults, so
    the same manifest always gives the same bytes. The text goes to a temporary file in the target's
    directory that replaces ``path`` in one step; readers never see a half-written manifest and a failed
    write leaves no temporary file behind.

    Args:
        message: the manifest, e.g. a ``ModelBundleManifest``.
        path: the destination, usually ``<artifact dir>/manifest.json``; its directory must exist.

    Raises:
        TypeError: ``message`` is not a protobuf message.
        ArtifactError: the file cannot be written.
    """
    if not isinstance(message, Message):
        raise TypeError(f"write_manifest expects a protobuf message; got {type(message).__name__}")
    text = json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=2,
        sort_keys=True,
    )
    dest = Path(path)
    try:
        write_text_atomically(dest, text + "\n")
    except OSError as err:
        raise ArtifactError(f"cannot write manifest {dest}: {err}") from err


def read_manifest(
    path: str | os.PathLike[str],
    message_type: type[ManifestT],
    expected_format_version: int | tuple[int, ...],
) -> ManifestT:
    """Reads a manifest written by :func:`write_manifest` and checks its format version.

    Fields unknown to this mol (added by a newer writer of the same format version) are ignored.

    Args:
        path: the manifest file.
        message_type: ``ModelBundleManifest`` or ``IndexManifest``.
        expected_format_version: the version accepted, e.g. :data:`INDEX_FORMAT_VERSION`, or a tuple of
            the versions accepted.

    Returns:
        The parsed manifest.

    Raises:
        ArtifactError: the file is missing or unreadable, is not a valid manifest of ``message_type``, or
            has another format version.
    """
    kind = message_type.DESCRIPTOR.full_name
    source = Path(path)
    if not source.is_file():
        raise ArtifactError(f"manifest {source} not found: expected a {kind} (JSON) at that path")
    try:
        text = source.read_text(encoding="utf-8")
        message = json_format.Parse(text, message_type(), ignore_unknown_fields=True)
    except (OSError, UnicodeDecodeError, json_format.ParseError) as err:
        raise ArtifactError(f"manifest {source} is not a readable {kind} JSON document: {err}") from err
    version = message.format_version
    accepted = (
        expected_format_version if isinstance(expected_format_version, tuple) else (expected_format_version,)
    )
    wanted = " or ".join(str(v) for v in accepted)
    if version == 0:
        raise ArtifactError(
            f"manifest {source} has no format_version; expected a {kind} with format_version {wanted}"
        )
    if version not in accepted:
        raise ArtifactError(
            f"manifest {source}: artifact format version {version} is not supported by this mol "
            f"(expects {wanted}); rebuild it or upgrade mol"
        )
    return message


def _checked_relative(entry_path: str, root: Path) -> Path:
    rel = PurePosixPath(entry_path)
    if not entry_path or rel.is_absolute() or ".." in rel.parts or "\\" in entry_path:
        raise ArtifactError(
            f"manifest of {root} lists the file path {entry_path!r}; paths must be relative to the artifact "
            "directory, use '/' and never '..'"
        )
    return root.joinpath(*rel.parts)


def verify_files(manifest: ModelBundleManifest | IndexManifest, root: str | os.PathLike[str]) -> None:
    """Checks every file a manifest lists against its size and SHA-256.

    Also checks that every file the manifest names in a ``*_file`` field (e.g. ``query_encoder_file``) is
    listed in ``files``.

    Args:
        manifest: the manifest read from ``root``.
        root: the artifact directory the manifest's paths are relative to.

    Raises:
        ArtifactError: a listed file is missing, has another size (truncated or replaced) or another
            SHA-256 (corrupt or replaced), or a named file is not listed; the message names the file.
    """
    base = Path(root)
    listed = {entry.path for entry in manifest.files}
    for field in manifest.DESCRIPTOR.fields:
        named = getattr(manifest, field.name)
        if field.name.endswith("_file") and named and named not in listed:
            raise ArtifactError(
                f"manifest of {base} names {field.name} {named!r} but does not list it in files; "
                "rebuild the artifact"
            )
    for entry in manifest.files:
        file = _checked_relative(entry.path, base)
        if not file.is_file():
            raise ArtifactError(
                f"{file} is missing: the manifest lists it (role {entry.role!r}, {entry.size_bytes} bytes); "
                "copy the whole artifact directory or rebuild it"
            )
        size = file.stat().st_size
        if size != entry.size_bytes:
            raise ArtifactError(
                f"{file} has {size} bytes but the manifest expects {entry.size_bytes}: the file is truncated "
                "or was replaced; copy the artifact again or rebuild it"
            )
        actual = sha256_file(file)
        if actual != entry.sha256.lower():
            raise ArtifactError(
                f"{file} is corrupt or was replaced: sha256 {actual}, expected {entry.sha256} from the "
                "manifest; copy the artifact again or rebuild it"
            )
