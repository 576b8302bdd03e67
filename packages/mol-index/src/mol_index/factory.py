"""Build any index kind from a short spec string (as ``faiss.index_factory``), and load any artifact.

    index = index_factory(similarity, item_ids, items, "hnsw32")       # RAILS over FAISS HNSW, M = 32
    index = index_factory(similarity, item_ids, items, "pq8x256")      # PQ codes fitted by k-means
    index = index_factory(similarity, item_ids, items, "pq", layer=trained_pq_layer)
    index = load_index("artifacts/my-index")                           # the artifact's kind's class

Specs (case-insensitive): ``exact``; ``flat``; ``ivf`` or ``ivf<nlist>``; ``hnsw`` or ``hnsw<M>``;
``pq`` or ``pq<subspaces>x<codebook_size>``; ``hierarchical`` or ``hierarchical<b1>x<b2>...``;
``adaptive`` (needs ``train_queries``). The other functions here are the earlier spellings of the same
builds.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch

from mol_core.errors import ConfigError
from mol_core.manifest import MANIFEST_FILENAME, sha256_file
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.index import MolIndex
from mol_index.indexes import IndexAdaptive, IndexExact, IndexFaiss, IndexHierarchical, IndexPQ
from mol_index.layers import PQItemLayer

__all__ = [
    "build_adaptive",
    "build_from_arrays",
    "build_from_bundle",
    "build_hierarchical",
    "build_pq",
    "index_factory",
    "load_index",
]

_SPEC = re.compile(r"^(exact|flat|ivf|hnsw|pq|hierarchical|adaptive)((?:\d+)(?:x\d+)*)?$")


def _check_options(spec: str, builder: Any, options: dict[str, Any]) -> None:
    positional = {"cls", "similarity", "item_ids", "items", "index", "train_queries", "layer", "stage"}
    accepted = set(inspect.signature(builder).parameters) - positional
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"index spec {spec!r} takes the options {', '.join(sorted(accepted))}; got {', '.join(unknown)}"
        )


def _numbers(spec: str, text: str | None, *, count: int | None) -> list[int]:
    numbers = [int(n) for n in text.split("x")] if text else []
    if count is not None and numbers and len(numbers) != count:
        raise ConfigError(f"index spec {spec!r}: expected {count} number(s) after the kind; got {text!r}")
    if any(n < 1 for n in numbers):
        raise ConfigError(f"index spec {spec!r}: numbers must be positive")
    return numbers


def index_factory(
    similarity: Similarity,
    item_ids: torch.Tensor,
    items: ItemSide | torch.Tensor,
    spec: str = "exact",
    *,
    layer: torch.nn.Module | None = None,
    train_queries: QuerySide | None = None,
    **options: Any,
) -> MolIndex:
    """An index of the kind ``spec`` names over ``N`` items (see the module for the specs).

    Args:
        similarity: a ``MoLSimilarity`` or ``DotProductSimilarity``.
        item_ids: ``(N,)`` distinct non-negative integer external ids.
        items: the ``(N, Px, d)`` item side, or ``(N, Dx)`` item representations.
        spec: the kind and its main number(s), e.g. ``"ivf1024"``, ``"hnsw32"``, ``"pq8x256"``.
        layer: ``pq`` / ``hierarchical``: a layer trained with the model (no k-means).
        train_queries: ``adaptive``: training queries ``(Q, Pq, d)`` (+ ``(Q, P)`` gating).
        **options: further keyword arguments of the kind's ``from_items`` / ``from_index`` (e.g.
            ``ef_construction``, ``exact_mean``, ``iterations``, ``seed``, ``per_query``, ``reg``).

    Returns:
        An :class:`~mol_index.indexes.IndexExact`, ``IndexFaiss``, ``IndexPQ``, ``IndexHierarchical`` or
        ``IndexAdaptive``.

    Raises:
        ConfigError: an unknown spec, a missing ``train_queries``, a ``layer`` or ``train_queries`` the kind
            does not take, an option of another kind, or what the kind's build refuses.
        ShapeError: items or ids that do not fit.

    Example:
        ``index_factory(sim, ids, items, "hierarchical16x8").search(queries, 10)``
    """
    match = _SPEC.match(spec.strip().lower())
    if match is None:
        raise ConfigError(
            f"unknown index spec {spec!r}; expected exact, flat, ivf[<nlist>], hnsw[<M>], "
            "pq[<subspaces>x<codebook_size>], hierarchical[<b1>x<b2>...] or adaptive"
        )
    kind, text = match.group(1), match.group(2)
    if layer is not None and kind not in ("pq", "hierarchical"):
        raise ConfigError(
            f"index spec {spec!r} takes no layer; a trained layer builds a pq or hierarchical index"
        )
    if train_queries is not None and kind != "adaptive":
        raise ConfigError(f"index spec {spec!r} takes no train_queries; they train an adaptive index")
    if kind == "exact":
        _numbers(spec, text, count=0)
        _check_options(spec, IndexExact.from_items, options)
        return IndexExact.from_items(similarity, item_ids, items)
    if kind in ("flat", "ivf", "hnsw"):
        numbers = _numbers(spec, text, count=1 if kind != "flat" else 0)
        if kind == "ivf" and numbers:
            options["nlist"] = numbers[0]
        if kind == "hnsw" and numbers:
            options["hnsw_m"] = numbers[0]
        _check_options(spec, IndexFaiss.from_items, options)
        return IndexFaiss.from_items(similarity, item_ids, items, stage=kind, **options)
    builders = {
        "pq": IndexPQ.from_index,
        "hierarchical": IndexHierarchical.from_index,
        "adaptive": IndexAdaptive.from_index,
    }
    builder: Any = builders[kind]
    _check_options(spec, builder, options)
    exact = IndexExact.from_items(similarity, item_ids, items)
    if kind == "pq":
        numbers = _numbers(spec, text, count=2)
        if numbers:
            options |= {"subspaces": numbers[0], "codebook_size": numbers[1]}
        if layer is not None and not isinstance(layer, PQItemLayer):
            raise ConfigError(f"a pq index takes a PQItemLayer; got {type(layer).__name__}")
        return IndexPQ.from_index(exact, layer=layer, **options)
    if kind == "hierarchical":
        numbers = _numbers(spec, text, count=None)
        if numbers:
            options["branching"] = tuple(numbers)
        return IndexHierarchical.from_index(exact, layer=layer, **options)
    _numbers(spec, text, count=0)
    if train_queries is None:
        raise ConfigError("an adaptive index needs train_queries: queries drawn like real ones")
    return IndexAdaptive.from_index(exact, train_queries, **options)


def load_index(path: str | Path) -> MolIndex:
    """Loads any index artifact as its kind's class (the same as :meth:`MolIndex.load`).

    Returns:
        an :class:`IndexExact`, :class:`IndexFaiss`, :class:`IndexPQ`, :class:`IndexHierarchical` or
        :class:`IndexAdaptive`, as the artifact's kind says.

    Raises:
        ArtifactError: missing, corrupt, or of another format version or kind.

    Example::

        index = load_index("indexes/prod")
        scores, ids = index.search(query_side, k=10)
    """
    return MolIndex.load(path)


#: An ``exact`` or FAISS-stage index from in-memory arrays: the earlier spelling of :meth:`MolIndex.build`.
build_from_arrays = MolIndex.build


def build_from_bundle(
    bundle_path: str | Path,
    *,
    stage: str = "torch",
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    exact_mean: bool = True,
    linearized: bool = False,
) -> MolIndex:
    """An ``exact`` or FAISS-stage index over every item of a mol-train model bundle (``mol_core.bundle``).

    The bundle's precomputed item side and similarity are used as they are; its item vocabulary gives the
    external ids, which must be integers (the wire format of mol-serve carries int64 ids). The index
    records the SHA-256 of the bundle's manifest.json (``source_bundle_sha256``).

    Raises:
        ArtifactError: the bundle is missing, corrupt or of another format version.
        ConfigError: the vocabulary holds ids that are not integers.

    Returns:
        an :class:`IndexExact` (``stage="torch"``) or :class:`IndexFaiss`.

    Example::

        build_from_bundle("bundles/ml1m", stage="hnsw").save("indexes/ml1m-hnsw")
    """
    from mol_core.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in bundle.item_ids):
        raise ConfigError(
            f"{bundle_path}: the bundle's item vocabulary holds non-integer ids; mol-index needs integer ids"
        )
    index = MolIndex.build(
        bundle.similarity,
        torch.tensor(bundle.item_ids, dtype=torch.int64),
        bundle.items,
        stage=stage,
        nlist=nlist,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        exact_mean=exact_mean,
        linearized=linearized,
    )
    index.source_bundle_sha256 = sha256_file(Path(bundle_path) / MANIFEST_FILENAME)
    return index


def build_pq(
    index: MolIndex,
    *,
    layer: PQItemLayer | None = None,
    coarse: int = 1,
    subspaces: int = 8,
    codebook_size: int = 256,
    iterations: int = 20,
) -> IndexPQ:
    """A ``pq`` index over the items and similarity of ``index``: :meth:`IndexPQ.from_index`.

    Returns and raises as :meth:`IndexPQ.from_index` (which documents its arguments); the earlier
    spelling of ``index_factory(..., "pq...")`` for an index already built.
    """
    return IndexPQ.from_index(
        index,
        layer=layer,
        coarse=coarse,
        subspaces=subspaces,
        codebook_size=codebook_size,
        iterations=iterations,
    )


def build_hierarchical(
    index: MolIndex,
    *,
    layer: torch.nn.Module | None = None,
    branching: tuple[int, ...] = (16, 8),
    iterations: int = 20,
    seed: int = 0,
) -> IndexHierarchical:
    """A ``hierarchical`` index over the items of ``index``: :meth:`IndexHierarchical.from_index`.

    Returns and raises as :meth:`IndexHierarchical.from_index` (which documents its arguments); the earlier
    spelling of ``index_factory(..., "hierarchical...")`` for an index already built.
    """
    return IndexHierarchical.from_index(
        index, layer=layer, branching=branching, iterations=iterations, seed=seed
    )


def build_adaptive(
    index: MolIndex,
    train_queries: QuerySide,
    *,
    per_query: int = 100,
    reg: float = 1000.0,
    iterations: int = 10,
) -> IndexAdaptive:
    """An ``adaptive`` index over the items and similarity of ``index``: :meth:`IndexAdaptive.from_index`.

    Returns and raises as :meth:`IndexAdaptive.from_index` (which documents its arguments); the earlier
    spelling of ``index_factory(..., "adaptive...")`` for an index already built.
    """
    return IndexAdaptive.from_index(index, train_queries, per_query=per_query, reg=reg, iterations=iterations)
