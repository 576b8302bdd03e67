"""Argument normalisation shared by the search functions and the CLI: ``k``, exclusions, query tensors,
and arrays read from ``.npy`` or ``.safetensors`` files.

Every check raises a :mod:`mol_core.errors` error that says what was expected and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, QuerySide, Similarity

__all__ = ["Exclude", "as_query_side", "check_k", "exclusion_tensor", "read_array", "read_tensors"]

#: Ids to exclude per query: a padded ``(B, L)`` integer tensor with ``-1`` padding, or one list per query.
Exclude = torch.Tensor | Sequence[Sequence[int]]


def check_k(k: int, num_items: int) -> int:
    """Returns ``k`` if ``1 <= k <= N``, else raises :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"k must be an integer in [1, N={num_items}]; got {k!r}")
    if not 1 <= k <= num_items:
        raise ConfigError(
            f"k must be in [1, N={num_items}] (the number of items in the corpus); got k={k}. "
            "Ask for at most N results"
        )
    return k


def exclusion_tensor(exclude: Exclude | None, batch_size: int) -> torch.Tensor | None:
    """Turns per-query exclusions into a ``(B, L)`` int64 tensor padded with ``-1`` (or ``None``).

    Args:
        exclude: ``(B, L)`` integer tensor (``-1`` = padding) or ``B`` sequences of ids, or ``None``.
        batch_size: ``B``.

    Raises:
        ShapeError: the tensor is not ``(B, L)`` integers, or there is not one list per query.
    """
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor):
        if exclude.dim() != 2 or exclude.shape[0] != batch_size:
            raise ShapeError(
                f"exclude must have shape (B={batch_size}, L) with -1 padding; got {tuple(exclude.shape)}"
            )
        if exclude.dtype.is_floating_point or exclude.dtype == torch.bool:
            raise ShapeError(f"exclude must hold integer ids; got dtype {exclude.dtype}")
        return exclude.to(torch.int64)
    rows = list(exclude)
    if len(rows) != batch_size:
        raise ShapeError(f"exclude must hold one list of ids per query (B={batch_size}); got {len(rows)}")
    width = max((len(row) for row in rows), default=0)
    out = torch.full((batch_size, max(width, 1)), -1, dtype=torch.int64)  # (B, L)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.int64)
    return out


def as_query_side(
    similarity: Similarity, queries: QuerySide | torch.Tensor, gating: torch.Tensor | None = None
) -> QuerySide:
    """Accepts a :class:`QuerySide` or query component embeddings and checks them against ``similarity``.

    Args:
        similarity: the similarity the index scores with (``Pq``, ``d``, gating or not).
        queries: a ``QuerySide``; or ``(B, Pq, d)`` query component embeddings; or, for a similarity with
            ``Pq = 1`` and no gating (a dot product), ``(B, d)`` query representations, which go through
            ``similarity.query_side`` (so they are L2-normalised when the similarity says so).
        gating: ``(B, P)`` query gating features, required with a tensor ``queries`` for MoL.

    Raises:
        ShapeError: wrong rank or dimension, or gating missing / present when it should not be.
    """
    num_q, dim, num_p = similarity.num_query_components, similarity.component_dim, similarity.num_components
    needs_gating = not isinstance(similarity, DotProductSimilarity)
    if isinstance(queries, QuerySide):
        side = queries
    elif isinstance(queries, torch.Tensor):
        if queries.dim() == 2 and not needs_gating:
            if queries.shape[1] != dim:
                raise ShapeError(f"queries must have shape (B, {dim}); got {tuple(queries.shape)}")
            return similarity.query_side(queries)
        if queries.dim() != 3 or tuple(queries.shape[1:]) != (num_q, dim):
            raise ShapeError(
                f"queries must be a QuerySide or query component embeddings of shape (B, Pq={num_q}, "
                f"d={dim}); got {tuple(queries.shape)}"
            )
        side = QuerySide(queries, gating)
    else:
        raise ShapeError(f"queries must be a QuerySide or a torch.Tensor; got {type(queries).__name__}")
    emb = side.embeddings
    if emb.dim() != 3 or tuple(emb.shape[1:]) != (num_q, dim):
        raise ShapeError(f"query embeddings must have shape (B, Pq={num_q}, d={dim}); got {tuple(emb.shape)}")
    if needs_gating and side.gating is None:
        raise ShapeError(
            f"this similarity needs (B, P={num_p}) query gating features: pass a QuerySide built by "
            "similarity.query_side(...) or the gating argument"
        )
    if side.gating is not None and tuple(side.gating.shape) != (emb.shape[0], num_p):
        raise ShapeError(
            f"query gating must have shape (B={emb.shape[0]}, P={num_p}); got {tuple(side.gating.shape)}"
        )
    return side


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".npy":
            return {"": torch.from_numpy(np.load(path, allow_pickle=False))}
        if path.suffix == ".safetensors":
            return load_file(str(path))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    raise ConfigError(f"{path}: expected a .npy or .safetensors file")


def read_array(path: Path | None, name: str, fallback: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The array in ``path`` (a .npy, or tensor ``name`` of a .safetensors), else ``fallback[name]``."""
    if path is None:
        return fallback.get(name)
    found = read_tensors(path)
    if "" in found:
        return found[""]
    if name not in found:
        raise ConfigError(f"{path} has no tensor named {name!r}; it holds {sorted(found)}")
    return found[name]
