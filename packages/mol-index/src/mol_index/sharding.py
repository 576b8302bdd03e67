"""Sharded indexes: a corpus split into S index artifacts, each loadable and servable alone.

An item goes to shard ``splitmix64(id) mod S`` (:func:`shard_of`): a stable rule that needs nothing but
the id, so the shard of an item never depends on the other items, the build order or the machine. A shard
set is a folder::

    shards.json            the shard-set manifest (format, rule, S, each shard's folder, item count and
                           manifest SHA-256, and the set's version: a digest of those)
    shard-00000-of-00004/  an ordinary index artifact (mol_index.artifact), loadable with load_index
    ...

:class:`ShardedIndex` searches every shard and merges their top-k: for exact search the merged result is
the unsharded one (the same ids; scores equal up to float rounding), since each item's score does not
depend on which shard holds it. Exact and FAISS-stage kinds shard; the learned kinds (pq, hierarchical,
adaptive) are fitted on a whole corpus and are refused.

Shape symbols: B queries, k results, S shards, N items.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mol_core.atomic import replace_directory, write_text_atomically
from mol_core.errors import ArtifactError, ConfigError
from mol_core.manifest import INDEX_FORMAT_VERSION, MANIFEST_FILENAME, read_manifest, sha256_file
from mol_core.proto.mol.v1 import manifest_pb2, similarity_pb2
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.index import MolIndex
from mol_index.search.rails import SearchResult

__all__ = [
    "SHARD_SET_FILE",
    "ShardInfo",
    "ShardSetInfo",
    "ShardedIndex",
    "build_shards",
    "merge_top_k",
    "read_shard_set",
    "shard_of",
]

#: The shard-set manifest inside a shard-set folder.
SHARD_SET_FILE = "shards.json"
_FORMAT = 1
_RULE = "splitmix64(id) mod S"
_SHARDABLE = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")


def shard_of(item_ids: torch.Tensor, num_shards: int) -> torch.Tensor:
    """The shard of each item id: ``splitmix64(id) mod S``.

    Args:
        item_ids: ``(N,)`` non-negative int64 ids.
        num_shards: S >= 1.

    Returns:
        ``(N,)`` int64 shard numbers in ``[0, S)``.

    Raises:
        ConfigError: ``num_shards`` < 1.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"num_shards must be a positive integer; got {num_shards!r}")
    z = item_ids.detach().cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z % np.uint64(num_shards)).astype(np.int64))


def build_shards(
    similarity: Similarity,
    item_ids: torch.Tensor,
    items: ItemSide | torch.Tensor,
    num_shards: int,
    **build_options: Any,
) -> list[MolIndex]:
    """S indexes over the items of each shard (:func:`shard_of`), each built by :meth:`MolIndex.build`.

    Args:
        similarity: the similarity every shard scores with.
        item_ids: ``(N,)`` external ids.
        items: ``(N, Px, d)`` item side (or ``(N, d)`` for a dot product).
        num_shards: S.
        build_options: passed to :meth:`MolIndex.build` (``stage``, ``nlist``, ``hnsw_m``, ...).

    Returns:
        S indexes, shard ``s`` holding the items with ``shard_of(id) == s``.

    Raises:
        ConfigError: ``num_shards`` < 1, or a shard that would be empty (fewer items than shards).
    """
    shards = shard_of(item_ids, num_shards)
    side = items if isinstance(items, ItemSide) else None
    out = []
    for shard in range(num_shards):
        rows = torch.nonzero(shards == shard).flatten()
        if rows.numel() == 0:
            raise ConfigError(
                f"shard {shard} of {num_shards} would be empty: use fewer shards for {len(shards)} items"
            )
        part: ItemSide | torch.Tensor
        if side is not None:
            part = ItemSide(side.embeddings[rows], None if side.gating is None else side.gating[rows])
        else:
            part = items[rows]  # type: ignore[index]
        out.append(MolIndex.build(similarity, item_ids[rows], part, **build_options))
    return out


def merge_top_k(
    results: list[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of several ``(scores, ids)`` results of the same queries, best first.

    Args:
        results: per shard, ``(B, k_s)`` float scores and ``(B, k_s)`` int64 ids (``-inf`` / ``-1`` pads).
        k: results per query.

    Returns:
        ``(B, k)`` scores, descending, and ``(B, k)`` ids; ``-inf`` / ``-1`` where fewer than ``k`` exist.
    """
    scores = torch.cat([s.float() for s, _ in results], dim=1)  # (B, sum k_s)
    ids = torch.cat([i for _, i in results], dim=1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((scores.shape[0], pad), float("-inf"))], dim=1)
        ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), -1)], dim=1)
    top, order = torch.topk(scores, k, dim=1)
    return top, torch.gather(ids, 1, order)


@dataclass
class ShardedIndex:
    """S index shards searched together.

    Attributes:
        shards: the S indexes, shard ``s`` at position ``s``.
        version: the shard set's version (a digest of its shards' manifests; "" before it is saved).
    """

    shards: list[MolIndex]
    version: str = ""

    @property
    def num_items(self) -> int:
        """N, the items of all shards."""
        return sum(shard.num_items for shard in self.shards)

    def search(
        self, queries: QuerySide | torch.Tensor, k: int, **search_options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` over all shards: each shard's top ``min(k, N_s)``, merged (:func:`merge_top_k`).

        Args:
            queries: as :meth:`MolIndex.search`.
            k: results per query, ``1 <= k <= N``.
            search_options: passed to every shard's :meth:`MolIndex.search` (``params``, ``exclude``,
                ``gating``).

        Returns:
            ``(B, k)`` scores and ids, as :meth:`MolIndex.search`.

        Raises:
            ConfigError: ``k`` not in ``[1, N]``, or what a shard's search raises.
        """
        result = self.search_with_info(queries, k, **search_options)
        return result.scores, result.ids

    def search_with_info(
        self, queries: QuerySide | torch.Tensor, k: int, **search_options: Any
    ) -> SearchResult:
        """Like :meth:`search`, with RAILS diagnostics over the shards: a query's result is ``exact`` when
        every shard's is (the merged top-k then holds the unsharded one), ``num_candidates`` is the sum
        over the shards and ``k_prime`` the largest ``K'`` a shard used."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise ConfigError(f"k must be in [1, N={self.num_items}]; got {k!r}")
        parts = [
            shard.search_with_info(queries, min(k, shard.num_items), **search_options)
            for shard in self.shards
        ]
        scores, ids = merge_top_k([(part.scores, part.ids) for part in parts], k)
        return SearchResult(
            scores=scores,
            ids=ids,
            exact=torch.stack([part.exact for part in parts]).all(dim=0),
            num_candidates=torch.stack([part.num_candidates for part in parts]).sum(dim=0),
            k_prime=torch.stack([part.k_prime for part in parts]).amax(dim=0),
        )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Writes the shard set folder (every shard, then ``shards.json``), atomically as a whole.

        Raises:
            ArtifactError: ``path`` exists (without ``overwrite``) or cannot be written.
        """
        target = Path(path)
        if target.exists() and not overwrite:
            raise ArtifactError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
        if not target.parent.is_dir():
            raise ArtifactError(f"the parent folder of {target} does not exist")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            entries = []
            count = len(self.shards)
            for number, shard in enumerate(self.shards):
                name = f"shard-{number:05d}-of-{count:05d}"
                shard.save(staging / name)
                digest = sha256_file(staging / name / MANIFEST_FILENAME)
                entries.append({"path": name, "items": shard.num_items, "manifest_sha256": digest})
            version = _version(entries)
            manifest = {"format": _FORMAT, "rule": _RULE, "num_shards": count, "version": version}
            write_text_atomically(
                staging / SHARD_SET_FILE, json.dumps({**manifest, "shards": entries}, indent=2)
            )
            replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.version = version
        return target

    @classmethod
    def load(cls, path: str | Path) -> ShardedIndex:
        """Reads a shard set folder, checking every shard against ``shards.json``.

        Raises:
            ArtifactError: a missing or malformed ``shards.json``, another format or rule, or a shard that
                is missing, corrupt or not the one the manifest names (its manifest digest differs).
        """
        root = Path(path)
        version, entries = _read_entries(root)
        shards = []
        for entry in entries:
            _check_shard_manifest(root, entry)
            shards.append(MolIndex.load(root / entry["path"]))
        return cls(shards, version=version)

    @classmethod
    def from_index(cls, index: MolIndex, num_shards: int, **build_options: Any) -> ShardedIndex:
        """The items and similarity of an exact or FAISS-stage ``index`` in ``num_shards`` shards, built with
        ``build_options`` (:meth:`MolIndex.build`'s; default an exact stage).

        Raises:
            ConfigError: a learned index kind (pq, hierarchical, adaptive), or as :func:`build_shards`.
        """
        if index.kind not in _SHARDABLE:
            raise ConfigError(
                f"a {index.kind!r} index is fitted on its whole corpus and cannot be sharded; shard one of "
                f"{', '.join(_SHARDABLE)}"
            )
        shards = build_shards(index.similarity, index.item_ids, index.corpus, num_shards, **build_options)
        for shard in shards:
            shard.source_bundle_sha256 = index.source_bundle_sha256
        return cls(shards)


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a shard set, as its manifest describes it.

    Attributes:
        number: the shard's position s in ``[0, S)``.
        path: its artifact folder.
        num_items: N_s, the items it holds.
        index_version: its ``IndexManifest.index_version`` (what a shard server reports and is asked for).
        kind: its artifact kind.
    """

    number: int
    path: Path
    num_items: int
    index_version: str
    kind: str


@dataclass(frozen=True)
class ShardSetInfo:
    """A shard set read from its manifests only (no item tensors): what a front tier needs.

    Attributes:
        path: the shard-set folder.
        version: the set's version (from ``shards.json``).
        shards: the S shards in shard order.
        similarity: the similarity config every shard shares.
    """

    path: Path
    version: str
    shards: list[ShardInfo]
    similarity: similarity_pb2.SimilarityConfig

    @property
    def num_items(self) -> int:
        """N, the items of all shards."""
        return sum(shard.num_items for shard in self.shards)


def read_shard_set(path: str | Path) -> ShardSetInfo:
    """Reads ``shards.json`` and every shard's ``manifest.json`` (not the tensors), checking each manifest
    against the digest the set records and that all shards share one similarity.

    Raises:
        ArtifactError: as :meth:`ShardedIndex.load` for the manifests, or shards with different
            similarities.
    """
    root = Path(path)
    version, entries = _read_entries(root)
    shards, similarity = [], None
    for number, entry in enumerate(entries):
        _check_shard_manifest(root, entry)
        folder = root / entry["path"]
        manifest = read_manifest(folder / MANIFEST_FILENAME, manifest_pb2.IndexManifest, INDEX_FORMAT_VERSION)
        if similarity is None:
            similarity = manifest.similarity
        elif manifest.similarity != similarity:
            raise ArtifactError(f"{folder}: its similarity differs from shard 0's; a shard set shares one")
        items, version_s = int(manifest.num_items), manifest.index_version
        shards.append(ShardInfo(number, folder, items, version_s, manifest.kind))
    assert similarity is not None  # _read_entries refuses a set without shards
    return ShardSetInfo(root, version, shards, similarity)


def _read_entries(root: Path) -> tuple[str, list[dict[str, str]]]:
    """``(version, [{"path", "manifest_sha256"}, ...])`` of ``root/shards.json``, format and rule checked."""
    try:
        manifest = json.loads((root / SHARD_SET_FILE).read_text())
        entries = [
            {"path": str(e["path"]), "manifest_sha256": str(e["manifest_sha256"])} for e in manifest["shards"]
        ]
        fmt, rule, count = manifest["format"], manifest["rule"], manifest["num_shards"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{root / SHARD_SET_FILE}: not a readable shard-set manifest ({err})") from err
    if fmt != _FORMAT or rule != _RULE or count != len(entries) or not entries:
        raise ArtifactError(
            f"{root / SHARD_SET_FILE}: format {fmt!r}, rule {rule!r}, {count!r} shards for "
            f"{len(entries)} entries; this mol-index reads format {_FORMAT} with the rule {_RULE!r} "
            "and at least one shard"
        )
    return str(manifest.get("version", "")), entries


def _check_shard_manifest(root: Path, entry: dict[str, str]) -> None:
    """Refuses a shard whose manifest is missing or is not the one the set names."""
    folder = root / entry["path"]
    file = folder / MANIFEST_FILENAME
    digest = sha256_file(file) if file.is_file() else "missing"
    if digest != entry["manifest_sha256"]:
        raise ArtifactError(f"{folder}: its manifest is {digest}, not the shard the shard set names")


def _version(entries: list[dict[str, Any]]) -> str:
    """A digest of the shards' manifest digests, in shard order."""
    import hashlib

    joined = "\n".join(f"{entry['path']} {entry['manifest_sha256']}" for entry in entries)
    return hashlib.sha256(joined.encode()).hexdigest()
