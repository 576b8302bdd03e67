"""The on-disk index artifact: a directory with ``manifest.json``, safetensors and FAISS files.

Layout (format version :data:`mol_core.manifest.INDEX_FORMAT_VERSION`)::

    <index>/
      manifest.json          mol.v1.IndexManifest (protobuf JSON): kind, similarity config, N, parameters,
                             every file below with size and SHA-256
      items.safetensors      item_ids (N,) int64 external ids; item_embeddings (N, Px, d);
                             item_gating (N, P) (MoL only)
      similarity.safetensors the similarity module's state dict (the gating MLPs MoL scores with)
      faiss/component_<b>.faiss, faiss/mean.faiss
                             FAISS candidate stage (kinds faiss-flat, faiss-ivf, faiss-hnsw only)
      adaptive.safetensors   factorized_items (N, r), query_map (d, r) (kind adaptive only)
      pq.safetensors         coarse (N, Px), codes (N, Px, M) and the PQ layer's state as layer.* (kind pq
                             only; the layer's options are manifest parameters pq.*)
      hierarchical.safetensors
                             the cluster tree of mol_index.search.hierarchy (kind hierarchical only)

Kinds: ``exact`` (no candidate-stage files: exact search and RAILS with the torch GEMM stage) and
``faiss-flat`` / ``faiss-ivf`` / ``faiss-hnsw`` (RAILS with that FAISS stage; exact search too), and
``adaptive`` (an exact index plus the learned model of :mod:`mol_index.search.adaptive`), ``pq`` (plus the
product-quantization codes of :mod:`mol_index.search.pq`) and ``hierarchical`` (plus the cluster tree of
:mod:`mol_index.search.hierarchy`).

Writing is atomic: everything goes to a temporary directory next to the destination, which is renamed
into place at the end; a failure removes it, leaving nothing behind. Reading checks the format version
and every file's size and SHA-256 before loading anything.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mol_core.atomic import replace_directory
from mol_core.errors import ArtifactError
from mol_core.manifest import (
    INDEX_FORMAT_VERSION,
    MANIFEST_FILENAME,
    file_entry,
    read_manifest,
    verify_files,
    write_manifest,
)
from mol_core.proto.mol.v1 import manifest_pb2
from mol_core.similarity import ItemSide, Similarity, similarity_from_config, similarity_to_config
from mol_index.layers import PQItemLayer, build_index_layer, parse_options
from mol_index.search.adaptive_model import AdaptiveModel
from mol_index.search.candidates import FaissStage
from mol_index.search.pq import PQCodes

if TYPE_CHECKING:
    from mol_index.search.hierarchy import HierarchicalIndex

__all__ = ["KINDS", "LoadedArtifact", "read_artifact", "write_artifact"]

#: Index kinds this mol writes and reads, by candidate stage.
KINDS = {
    "torch": "exact",
    "flat": "faiss-flat",
    "ivf": "faiss-ivf",
    "hnsw": "faiss-hnsw",
    "adaptive": "adaptive",
    "pq": "pq",
    "hierarchical": "hierarchical",
}
_ITEMS = "items.safetensors"
_ADAPTIVE = "adaptive.safetensors"
_SIMILARITY = "similarity.safetensors"
_PQ = "pq.safetensors"
_HIERARCHICAL = "hierarchical.safetensors"


@dataclass(frozen=True)
class LoadedArtifact:
    """The parts of an index artifact, checked and loaded (see :func:`read_artifact`)."""

    similarity: Similarity
    item_ids: torch.Tensor
    corpus: ItemSide
    stage_kind: str
    faiss_stage: FaissStage | None
    manifest: manifest_pb2.IndexManifest
    adaptive: AdaptiveModel | None = None
    pq: PQCodes | None = None
    hierarchical: HierarchicalIndex | None = None


def write_artifact(
    path: str | Path,
    *,
    similarity: Similarity,
    item_ids: torch.Tensor,
    corpus: ItemSide,
    stage_kind: str,
    faiss_stage: FaissStage | None,
    parameters: dict[str, str],
    version: str,
    overwrite: bool = False,
    source_bundle_sha256: str = "",
    adaptive: AdaptiveModel | None = None,
    pq: PQCodes | None = None,
    hierarchical: HierarchicalIndex | None = None,
) -> Path:
    """Writes an index artifact directory atomically; returns its path.

    Args:
        path: the directory to create; its parent must exist.
        similarity: the similarity (constructor arguments go to the manifest, parameters to safetensors).
        item_ids: ``(N,)`` int64 external ids.
        corpus: ``(N, Px, d)`` item embeddings and ``(N, P)`` gating features (or none).
        stage_kind: ``torch``, ``flat``, ``ivf`` or ``hnsw``.
        faiss_stage: the FAISS stage to save (None for ``torch``).
        parameters: build parameters to record in the manifest.
        version: the mol-index version writing it.
        overwrite: replace an existing directory at ``path`` (the old one is removed only after the new
            one is complete).
        source_bundle_sha256: SHA-256 of the model bundle's manifest.json the items came from, or "".
        adaptive: the learned model of an ``adaptive`` index (``stage_kind="adaptive"``).
        pq: the codes of a ``pq`` index (``stage_kind="pq"``).
        hierarchical: the cluster tree of a ``hierarchical`` index (``stage_kind="hierarchical"``).

    Raises:
        ArtifactError: ``path`` exists and ``overwrite`` is False, or a write failed. Missing parent
            directories are created.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise ArtifactError(f"{dest} already exists; choose another path or pass overwrite=True")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)  # as `mkdir -p`: the index's folder tree
    except OSError as err:
        raise ArtifactError(f"cannot write the index to {dest}: cannot create {dest.parent}: {err}") from err
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the index is an ordinary, readable directory
        tensors = {"item_ids": item_ids, "item_embeddings": corpus.embeddings}
        if corpus.gating is not None:
            tensors["item_gating"] = corpus.gating
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp / _ITEMS))
        state = {name: t.detach().cpu().contiguous() for name, t in similarity.state_dict().items()}
        save_file(state, str(tmp / _SIMILARITY))
        now = datetime.datetime.now(datetime.timezone.utc)
        kind = KINDS[stage_kind]
        manifest = manifest_pb2.IndexManifest(
            format_version=INDEX_FORMAT_VERSION,
            mol_version=version,
            kind=kind,
            index_version=f"{kind}-{now:%Y%m%d}-{secrets.token_hex(3)}",
            similarity=similarity_to_config(similarity),
            source_bundle_sha256=source_bundle_sha256,
            num_items=int(item_ids.shape[0]),
            parameters={
                **parameters,
                "stage": stage_kind,
                "temperature": repr(float(similarity.temperature)),
            },
        )
        manifest.created_at.FromDatetime(now)
        manifest.files.append(file_entry(tmp / _ITEMS, tmp, "index_tensors"))
        manifest.files.append(file_entry(tmp / _SIMILARITY, tmp, "similarity_state"))
        if faiss_stage is not None:
            for file in faiss_stage.save(tmp):
                manifest.files.append(file_entry(file, tmp, "faiss_index"))
        if adaptive is not None:
            model = {"factorized_items": adaptive.items, "query_map": adaptive.query_map}
            save_file({n: t.detach().cpu().contiguous() for n, t in model.items()}, str(tmp / _ADAPTIVE))
            manifest.files.append(file_entry(tmp / _ADAPTIVE, tmp, "adaptive_tensors"))
            manifest.parameters["rmse"] = repr(adaptive.rmse)
        if pq is not None:
            save_file(pq.to_tensors(), str(tmp / _PQ))
            manifest.files.append(file_entry(tmp / _PQ, tmp, "pq_codes"))
            manifest.parameters.update({f"pq.{k}": v for k, v in pq.layer.config().items()})
            manifest.parameters["pq.source"] = pq.source
        if hierarchical is not None:
            tree = {n: t.detach().cpu().contiguous() for n, t in hierarchical.to_tensors().items()}
            save_file(tree, str(tmp / _HIERARCHICAL))
            manifest.files.append(file_entry(tmp / _HIERARCHICAL, tmp, "hierarchical_tree"))
        write_manifest(manifest, tmp / MANIFEST_FILENAME)
        replace_directory(tmp, dest)
    except BaseException as err:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        if isinstance(err, OSError):
            raise ArtifactError(f"cannot write the index to {dest}: {err}") from err
        raise
    return dest


def _refuse_a_bundle(root: Path) -> None:
    """A clear error when ``root`` is a model bundle (its manifest names a query encoder), not an index."""
    try:
        data = json.loads((root / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # read_manifest reports what is wrong
    if isinstance(data, dict) and "query_encoder_file" in data and "kind" not in data:
        raise ArtifactError(
            f"{root} is a model bundle, not an index: build an index from it with "
            f"`mol-index build INDEX_PATH --bundle {root}` (or mol_index.build_from_bundle) and pass that"
        )


def read_artifact(path: str | Path) -> LoadedArtifact:
    """Reads and checks an index artifact written by :func:`write_artifact`.

    Raises:
        ArtifactError: missing manifest, another format version, unknown kind, a file whose size or
            SHA-256 does not match, or tensors inconsistent with the manifest.
    """
    root = Path(path)
    _refuse_a_bundle(root)
    manifest = read_manifest(root / MANIFEST_FILENAME, manifest_pb2.IndexManifest, INDEX_FORMAT_VERSION)
    stages = {kind: stage for stage, kind in KINDS.items()}
    if manifest.kind not in stages:
        raise ArtifactError(
            f"{root}: index kind {manifest.kind!r} is not one this mol-index reads ({sorted(stages)}); "
            "upgrade mol-index or rebuild the index"
        )
    verify_files(manifest, root)
    temperature_text = manifest.parameters.get("temperature")
    try:
        temperature = float(temperature_text) if temperature_text is not None else None
        similarity = similarity_from_config(manifest.similarity, temperature)
        similarity.load_state_dict(load_file(str(root / _SIMILARITY)))
        tensors = load_file(str(root / _ITEMS))
    except (SafetensorError, RuntimeError, ValueError, OSError) as err:
        raise ArtifactError(f"{root}: cannot load the index tensors: {err}; rebuild the index") from err
    similarity.eval()
    missing = {"item_ids", "item_embeddings"} - set(tensors)
    if missing:
        raise ArtifactError(f"{root}/{_ITEMS} lacks {sorted(missing)}; rebuild the index")
    item_ids = tensors["item_ids"]
    corpus = ItemSide(tensors["item_embeddings"], tensors.get("item_gating"))
    if item_ids.shape != (manifest.num_items,) or corpus.num_items != manifest.num_items:
        raise ArtifactError(
            f"{root}: the manifest says N = {manifest.num_items} items but the tensors hold "
            f"{tuple(item_ids.shape)} ids and {tuple(corpus.embeddings.shape)} embeddings; rebuild the index"
        )
    stage_kind = stages[manifest.kind]
    faiss_stage = None
    adaptive = None
    pq = None
    hierarchical = None
    if stage_kind == "adaptive":
        adaptive = _read_adaptive(root, manifest, corpus)
    elif stage_kind == "pq":
        pq = _read_pq(root, manifest, corpus, similarity)
    elif stage_kind == "hierarchical":
        hierarchical = _read_hierarchical(root, corpus)
    elif stage_kind != "torch":
        faiss_stage = FaissStage.load(stage_kind, root, similarity.num_item_components)
    return LoadedArtifact(
        similarity, item_ids, corpus, stage_kind, faiss_stage, manifest, adaptive, pq, hierarchical
    )


def _read_pq(
    root: Path, manifest: manifest_pb2.IndexManifest, corpus: ItemSide, similarity: Similarity
) -> PQCodes:
    params = {k.removeprefix("pq."): v for k, v in manifest.parameters.items() if k.startswith("pq.")}
    source = params.pop("source", "")
    try:
        layer = cast(PQItemLayer, build_index_layer("pq", similarity, parse_options(params)))
        codes = PQCodes.from_tensors(load_file(str(root / _PQ)), layer, source)
    except (SafetensorError, KeyError, OSError, ValueError, RuntimeError) as err:
        raise ArtifactError(f"{root}/{_PQ}: cannot load the PQ codes: {err}; rebuild the index") from err
    want = (corpus.num_items, corpus.embeddings.shape[1], layer.quantizer.subspaces)
    if tuple(codes.codes.shape) != want or tuple(codes.coarse.shape) != want[:2]:
        raise ArtifactError(
            f"{root}/{_PQ}: codes {tuple(codes.codes.shape)} and coarse ids {tuple(codes.coarse.shape)} "
            f"do not fit N = {want[0]}, Px = {want[1]}, M = {want[2]}; rebuild the index"
        )
    return codes


def _read_hierarchical(root: Path, corpus: ItemSide) -> HierarchicalIndex:
    from mol_index.search.hierarchy import HierarchicalIndex

    try:
        tree = HierarchicalIndex.from_tensors(load_file(str(root / _HIERARCHICAL)))
    except (SafetensorError, KeyError, OSError, ValueError, RuntimeError) as err:
        raise ArtifactError(
            f"{root}/{_HIERARCHICAL}: cannot load the cluster tree: {err}; rebuild the index"
        ) from err
    if tree.num_rows != corpus.num_items:
        raise ArtifactError(
            f"{root}/{_HIERARCHICAL}: the tree holds {tree.num_rows} items but the index N = "
            f"{corpus.num_items}; rebuild the index"
        )
    return tree


def _read_adaptive(root: Path, manifest: manifest_pb2.IndexManifest, corpus: ItemSide) -> AdaptiveModel:
    try:
        tensors = load_file(str(root / _ADAPTIVE))
        model = AdaptiveModel(
            tensors["factorized_items"], tensors["query_map"], float(manifest.parameters.get("rmse", "nan"))
        )
    except (SafetensorError, KeyError, OSError, ValueError) as err:
        raise ArtifactError(f"{root}/{_ADAPTIVE}: cannot load the adaptive model: {err}; rebuild") from err
    dim = corpus.embeddings.shape[-1]
    if model.items.shape[0] != corpus.num_items or model.query_map.shape != (dim, model.items.shape[1]):
        raise ArtifactError(
            f"{root}/{_ADAPTIVE}: factorized_items {tuple(model.items.shape)} and query_map "
            f"{tuple(model.query_map.shape)} do not fit N = {corpus.num_items}, d = {dim}; rebuild the index"
        )
    return model
