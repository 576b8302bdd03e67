"""Manifests: JSON round trips, atomic writes, format versions and file verification."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mol_core import manifest as manifest_module
from mol_core.errors import ArtifactError
from mol_core.manifest import (
    BUNDLE_FORMAT_VERSION,
    INDEX_FORMAT_VERSION,
    MANIFEST_FILENAME,
    file_entry,
    read_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)
from mol_core.proto.mol.v1.manifest_pb2 import FileEntry, IndexManifest, ModelBundleManifest
from mol_core.proto.mol.v1.similarity_pb2 import (
    DotProductConfig,
    MixtureOfLogitsConfig,
    SimilarityConfig,
)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "tensors").mkdir(parents=True)
    (root / "query_encoder.pt2").write_bytes(b"encoder" * 100)
    (root / "tensors" / "items.safetensors").write_bytes(bytes(range(256)) * 8)
    (root / "vocab.txt").write_text("10\n20\n30\n", encoding="utf-8")
    return root


def _bundle_manifest(root: Path) -> ModelBundleManifest:
    manifest = ModelBundleManifest(
        format_version=BUNDLE_FORMAT_VERSION,
        mol_version="0.1.0",
        model_name="ml-1m-sasrec-mol",
        architecture="sasrec",
        similarity=SimilarityConfig(
            mixture_of_logits=MixtureOfLogitsConfig(
                query_components=8,
                item_components=4,
                component_dim=64,
                user_components=2,
                temperature=0.05,
                gating_hidden_dim=128,
                gating_dropout=0.2,
                query_input_dim=50,
                item_input_dim=50,
                user_input_dim=16,
                user_dropout=0.1,
            )
        ),
        num_items=3,
        item_vocabulary_file="vocab.txt",
        query_encoder_file="query_encoder.pt2",
        item_tensors_file="tensors/items.safetensors",
        parameters={"max_seq_len": "200", "dataset": "ml-1m"},
    )
    manifest.created_at.FromJsonString("2026-11-23T12:34:56Z")
    manifest.files.extend(
        [
            file_entry(root / "query_encoder.pt2", root, "query_encoder"),
            file_entry(
                root / "tensors" / "items.safetensors", root, "item_tensors", description="(N, Px, d)"
            ),
            file_entry(root / "vocab.txt", root, "item_vocabulary"),
        ]
    )
    return manifest


def _index_manifest(root: Path) -> IndexManifest:
    manifest = IndexManifest(
        format_version=INDEX_FORMAT_VERSION,
        mol_version="0.1.0",
        kind="exact",
        index_version="exact-20261123-abc123",
        source_bundle_sha256="0" * 64,
        similarity=SimilarityConfig(
            dot_product=DotProductConfig(embedding_dim=64, l2_normalize=True, temperature=0.5)
        ),
        num_items=3,
        parameters={"block_size": "1024"},
    )
    manifest.created_at.FromJsonString("2026-11-23T00:00:00Z")
    manifest.files.append(file_entry(root / "tensors" / "items.safetensors", root, "index_tensors"))
    return manifest


def _leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------- checksums


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_file_entry_records_relative_posix_path_size_and_digest(bundle_dir: Path) -> None:
    path = bundle_dir / "tensors" / "items.safetensors"
    entry = file_entry(path, bundle_dir, "item_tensors", description="item side")
    assert entry == FileEntry(
        path="tensors/items.safetensors",
        size_bytes=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        role="item_tensors",
        description="item side",
    )


def test_file_entry_rejects_files_outside_the_artifact(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not inside the artifact directory"):
        file_entry(outside, bundle_dir, "other")
    with pytest.raises(ArtifactError, match="not an existing file"):
        file_entry(bundle_dir / "nope.bin", bundle_dir, "other")


# ------------------------------------------------------------------------------------ write and read


@pytest.mark.parametrize(
    ("build", "message_type", "version"),
    [
        (_bundle_manifest, ModelBundleManifest, BUNDLE_FORMAT_VERSION),
        (_index_manifest, IndexManifest, INDEX_FORMAT_VERSION),
    ],
)
def test_round_trip(bundle_dir: Path, build, message_type, version) -> None:  # type: ignore[no-untyped-def]
    manifest = build(bundle_dir)
    path = bundle_dir / MANIFEST_FILENAME
    write_manifest(manifest, path)
    assert read_manifest(path, message_type, version) == manifest
    verify_files(manifest, bundle_dir)


def test_manifest_json_is_readable_and_stable(bundle_dir: Path) -> None:
    manifest = _bundle_manifest(bundle_dir)
    path = bundle_dir / MANIFEST_FILENAME
    write_manifest(manifest, path)
    first = path.read_bytes()
    data = json.loads(first)
    assert data["format_version"] == BUNDLE_FORMAT_VERSION  # proto field names, not camelCase
    assert data["created_at"] == "2026-11-23T12:34:56Z"
    assert data["files"][1]["size_bytes"] == str(manifest.files[1].size_bytes)  # uint64 is a JSON string
    assert data["similarity"]["mixture_of_logits"]["query_components"] == 8
    assert data["similarity"]["mixture_of_logits"]["user_components"] == 2
    assert first.endswith(b"}\n")  # one trailing newline
    assert b"\n  " in first  # indented

    # The same content gives the same bytes, whatever the map insertion order.
    reordered = _bundle_manifest(bundle_dir)
    reordered.ClearField("parameters")
    reordered.parameters["dataset"] = "ml-1m"
    reordered.parameters["max_seq_len"] = "200"
    write_manifest(reordered, path)
    assert path.read_bytes() == first


def test_defaults_are_written_out(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILENAME
    write_manifest(IndexManifest(format_version=INDEX_FORMAT_VERSION), path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == ""
    assert data["num_items"] == "0"
    assert data["files"] == []


def test_write_leaves_no_temporary_files_and_overwrites(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST_FILENAME
    before = sorted(p.name for p in bundle_dir.iterdir())
    write_manifest(_bundle_manifest(bundle_dir), path)
    write_manifest(_bundle_manifest(bundle_dir), path)
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted([*before, MANIFEST_FILENAME])


def test_failed_writes_leave_no_temporary_files(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = bundle_dir / MANIFEST_FILENAME
    write_manifest(_index_manifest(bundle_dir), path)
    original = path.read_bytes()

    with pytest.raises(TypeError, match="expects a protobuf message"):
        write_manifest({"format_version": 1}, path)  # type: ignore[arg-type]
    assert _leftovers(bundle_dir) == []

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(manifest_module.os, "replace", failing_replace)
    with pytest.raises(ArtifactError, match=r"cannot write manifest .*disk full"):
        write_manifest(_bundle_manifest(bundle_dir), path)
    assert _leftovers(bundle_dir) == []
    assert path.read_bytes() == original  # the previous manifest is untouched


def test_write_into_a_missing_directory_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot write manifest"):
        write_manifest(IndexManifest(format_version=1), tmp_path / "missing" / MANIFEST_FILENAME)


def test_wrong_format_version_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILENAME
    write_manifest(IndexManifest(format_version=7, kind="exact"), path)
    with pytest.raises(ArtifactError) as info:
        read_manifest(path, IndexManifest, INDEX_FORMAT_VERSION)
    message = str(info.value)
    assert str(path) in message
    assert (
        "artifact format version 7 is not supported by this mol (expects 1); rebuild it or upgrade mol"
        in message
    )


def test_missing_format_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILENAME
    path.write_text('{"kind": "exact"}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="has no format_version"):
        read_manifest(path, IndexManifest, INDEX_FORMAT_VERSION)


def test_missing_and_unparseable_manifests(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / MANIFEST_FILENAME
    with pytest.raises(ArtifactError, match=r"not found: expected a mol\.v1\.ModelBundleManifest") as info:
        read_manifest(missing, ModelBundleManifest, BUNDLE_FORMAT_VERSION)
    assert str(missing) in str(info.value)

    broken = tmp_path / MANIFEST_FILENAME
    for text in ["{not json", '{"format_version": "one"}', '{"files": {"path": 3}}']:
        broken.write_text(text, encoding="utf-8")
        with pytest.raises(ArtifactError, match=r"is not a readable mol\.v1\.ModelBundleManifest JSON"):
            read_manifest(broken, ModelBundleManifest, BUNDLE_FORMAT_VERSION)
    broken.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ArtifactError, match="is not a readable"):
        read_manifest(broken, ModelBundleManifest, BUNDLE_FORMAT_VERSION)


def test_unknown_fields_from_a_newer_writer_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILENAME
    path.write_text('{"format_version": 1, "kind": "pq", "added_later": {"x": 1}}', encoding="utf-8")
    assert read_manifest(path, IndexManifest, INDEX_FORMAT_VERSION).kind == "pq"


# -------------------------------------------------------------------------------------- verify_files


def test_verify_files_catches_a_flipped_byte(bundle_dir: Path) -> None:
    manifest = _bundle_manifest(bundle_dir)
    target = bundle_dir / "tensors" / "items.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    expected = manifest.files[1].sha256
    with pytest.raises(ArtifactError, match="corrupt") as info:
        verify_files(manifest, bundle_dir)
    message = str(info.value)
    assert str(target) in message
    assert expected in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message


def test_verify_files_catches_a_missing_file(bundle_dir: Path) -> None:
    manifest = _bundle_manifest(bundle_dir)
    (bundle_dir / "vocab.txt").unlink()
    with pytest.raises(ArtifactError, match=r"vocab\.txt is missing.*item_vocabulary"):
        verify_files(manifest, bundle_dir)


def test_verify_files_catches_a_truncated_file(bundle_dir: Path) -> None:
    manifest = _bundle_manifest(bundle_dir)
    target = bundle_dir / "query_encoder.pt2"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match=r"query_encoder\.pt2 has 699 bytes but the manifest expects 700"):
        verify_files(manifest, bundle_dir)


def test_verify_files_rejects_paths_leaving_the_artifact(bundle_dir: Path) -> None:
    for bad in ["../outside.bin", "/abs/items.bin", ""]:
        manifest = IndexManifest(format_version=1, files=[FileEntry(path=bad, size_bytes=1, sha256="0" * 64)])
        with pytest.raises(ArtifactError, match="paths must be relative"):
            verify_files(manifest, bundle_dir)


def test_verify_files_requires_named_files_to_be_listed(bundle_dir: Path) -> None:
    manifest = _bundle_manifest(bundle_dir)
    del manifest.files[0]  # query_encoder.pt2
    with pytest.raises(
        ArtifactError, match=r"names query_encoder_file 'query_encoder\.pt2' but does not list"
    ):
        verify_files(manifest, bundle_dir)
