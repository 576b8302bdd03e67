"""The loaded index versions and the aliases pointing at them, with atomic alias flips.

A request resolves its alias to a :class:`LoadedIndex` once, when it starts, and keeps that object: a
later flip or unload does not affect it (the old version is freed when the last request holding it
finishes). Loading and validating happen outside the lock (in a worker thread); only the flip holds it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mol_core.bundle import ModelBundle
from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, Similarity
from mol_index import MolIndex, SearchParams
from mol_serve.errors import InvalidRequest, LoadRefused, NotFound, echo

__all__ = ["IndexRegistry", "LoadedIndex", "check_fits_bundle", "load_and_validate", "needs_gating"]


def needs_gating(similarity: Similarity) -> bool:
    """True when queries need ``(B, P)`` gating features (every similarity but the dot product)."""
    return not isinstance(similarity, DotProductSimilarity)


@dataclass(frozen=True)
class LoadedIndex:
    """One loaded index version.

    Attributes:
        version: ``IndexManifest.index_version``.
        path: the artifact directory it was loaded from.
        index: the searchable index.
        kind: artifact kind (``exact``, ``faiss-hnsw``, ...).
        load_us: microseconds spent loading and validating it.
    """

    version: str
    path: Path
    index: MolIndex
    kind: str
    load_us: int


def check_fits_bundle(similarity: Similarity, bundle: ModelBundle | None, what: str) -> None:
    """Refuses (LoadRefused) an index or shard set whose ``(Pq, d, P)`` differ from the bundle's encoder."""
    if bundle is None:
        return
    want = (bundle.similarity.num_query_components, bundle.similarity.component_dim)
    got = (similarity.num_query_components, similarity.component_dim)
    if want != got or bundle.similarity.num_components != similarity.num_components:
        raise LoadRefused(
            f"{what} has (Pq, d, P) = {(*got, similarity.num_components)} but the model bundle encodes "
            f"{(*want, bundle.similarity.num_components)}; build the index from this bundle's items"
        )


def load_and_validate(
    path: Path,
    bundle: ModelBundle | None,
    device: str = "cpu",
    kernel: str = "auto",
    faiss_device: str | None = None,
) -> LoadedIndex:
    """Loads an artifact, moves it to ``device`` (``faiss_device``, default ``device``, for FAISS-stage
    indexes), checks it fits the bundle, and runs one exact search with ``kernel`` as a smoke test.

    Raises:
        LoadRefused: the artifact is missing, corrupt, incompatible with the bundle, or its smoke search
            fails or returns non-finite scores.
    """
    from mol_index.artifact import read_artifact

    start = time.perf_counter()
    try:
        art = read_artifact(path)  # verifies format version and checksums; the manifest names the version
        manifest = art.manifest
        index = MolIndex.from_artifact(art)
        index.to(device if art.faiss_stage is None else (faiss_device or device))
    except (ArtifactError, ConfigError, ShapeError, OSError) as err:
        raise LoadRefused(f"cannot load index artifact {path}: {err}") from err
    sim = index.similarity
    check_fits_bundle(sim, bundle, f"index {path}")
    if index.num_items < 1:
        raise LoadRefused(f"index {path} holds no items")
    try:
        generator = torch.Generator().manual_seed(0)
        queries = torch.randn(1, sim.num_query_components, sim.component_dim, generator=generator)
        gating = None
        if needs_gating(sim):
            gating = torch.randn(1, sim.num_components, generator=generator)
        scores, _ = index.search(
            queries, 1, gating=gating, params=SearchParams(algorithm="exact", kernel=kernel)
        )
    except Exception as err:  # a smoke test: any failure means the artifact cannot serve
        raise LoadRefused(f"index {path} failed its smoke search: {err}") from err
    if not bool(torch.isfinite(scores).all()):
        raise LoadRefused(f"index {path} returned non-finite scores in its smoke search; refusing it")
    load_us = int((time.perf_counter() - start) * 1e6)
    return LoadedIndex(manifest.index_version, Path(path), index, manifest.kind, load_us)


class IndexRegistry:
    """Thread-safe map of loaded versions and aliases.

    Args:
        default_alias: alias used when a request names neither alias nor version.
    """

    def __init__(self, default_alias: str | None = None) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, LoadedIndex] = {}
        self._aliases: dict[str, str] = {}
        self.default_alias = default_alias

    def resolve(self, alias: str | None = None, version: str | None = None) -> LoadedIndex:
        """The index a request runs on: by version, by alias, or by the default alias.

        Raises:
            InvalidRequest: unknown alias or version, or no default alias configured.
        """
        with self._lock:
            if version:
                found = self._versions.get(version)
                if found is None:
                    raise InvalidRequest(
                        f"unknown index_version {echo(version)}; loaded versions: {sorted(self._versions)}"
                    )
                return found
            name = alias or self.default_alias
            if not name:
                raise InvalidRequest("the request names no index and the server has no default alias")
            target = self._aliases.get(name)
            if target is None:
                raise InvalidRequest(
                    f"unknown index alias {echo(name)}; known aliases: {sorted(self._aliases)}"
                )
            return self._versions[target]

    def install(self, loaded: LoadedIndex, alias: str) -> str:
        """Registers ``loaded`` and points ``alias`` at it atomically; returns the previous version or "".

        A version no alias points at any more is dropped (requests holding it still finish).
        """
        if not alias:
            raise InvalidRequest("LoadIndex needs a non-empty alias")
        with self._lock:
            previous = self._aliases.get(alias, "")
            self._versions.setdefault(loaded.version, loaded)
            self._aliases[alias] = loaded.version
            if self.default_alias is None:
                self.default_alias = alias
            self._drop_orphans()
            return previous

    def unload(self, *, alias: str | None = None, version: str | None = None) -> tuple[list[str], list[str]]:
        """Removes an alias (and its version if orphaned), or a version and its aliases.

        Returns:
            ``(unloaded versions, removed aliases)``.

        Raises:
            NotFound: the alias or version is not loaded.
            InvalidRequest: neither given.
        """
        with self._lock:
            if alias:
                if alias not in self._aliases:
                    raise NotFound(
                        f"unknown index alias {echo(alias)}; known aliases: {sorted(self._aliases)}"
                    )
                del self._aliases[alias]
                removed = [alias]
            elif version:
                if version not in self._versions:
                    raise NotFound(f"unknown index_version {echo(version)}; loaded: {sorted(self._versions)}")
                removed = sorted(a for a, v in self._aliases.items() if v == version)
                for name in removed:
                    del self._aliases[name]
                del self._versions[version]
                return [version], removed
            else:
                raise InvalidRequest("UnloadIndex needs an alias or an index_version")
            return self._drop_orphans(), removed

    def snapshot(self) -> tuple[list[LoadedIndex], dict[str, str]]:
        """``(loaded versions sorted by version, alias -> version)`` at one instant."""
        with self._lock:
            return sorted(self._versions.values(), key=lambda x: x.version), dict(self._aliases)

    def _drop_orphans(self) -> list[str]:
        used = set(self._aliases.values())
        orphans = sorted(v for v in self._versions if v not in used)
        for version in orphans:
            del self._versions[version]
        return orphans
