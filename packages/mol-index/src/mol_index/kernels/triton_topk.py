"""Fused exact MoL top-k in Triton: score a tile of items for one query, keep the tile's top-k, merge.

One Triton program scores ``BLOCK_N`` items for one query in a single pass (component logits, the
``logits_mlp`` gating MLP, the gated softmax, the mixture) without writing logits or gating activations
to memory, masks excluded rows, and writes the tile's top ``min(k, BLOCK_N)`` (score, row) pairs. The
corpus is processed in chunks of ``chunk_items`` items per launch; each chunk's tile results are merged
into the running top-k with :func:`~mol_index.search.exact.merge_topk`, so memory is
``(B, chunk / BLOCK_N, k)``.
Results follow the exact search's tie rule (within a tile the smaller row is taken first).

Status: checked on CPU under ``TRITON_INTERPRET=1`` against :func:`~mol_index.search.exact.exact_search` on
small
random inputs; **not run or timed on a GPU** (none was available). It is a first version: the component
logits are a broadcast-and-sum, not a tensor-core ``tl.dot``. Requirements: ``MoLSimilarity`` in eval
mode (gating dropout is not applied), float32 tensors, and ``P = Pq * Px``, ``d``, the gating hidden width
and ``BLOCK_N`` powers of two with ``P`` and the hidden width at least 16 (``tl.dot`` tiles).

Install with ``pip install mol-index[triton]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide
from mol_index._inputs import Exclude, check_k, exclusion_tensor
from mol_index.search.exact import merge_topk

__all__ = ["TRITON_AVAILABLE", "triton_exact_search", "unsupported_reason"]

try:
    import triton  # type: ignore[import-not-found,unused-ignore]
    import triton.language as tl  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

#: True when Triton imports (the ``triton`` extra is installed).
TRITON_AVAILABLE = triton is not None
_BIG_ROW = 2147483647

if TRITON_AVAILABLE:

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def _mol_tile_topk_kernel(
        q_emb: Any,
        q_gate: Any,
        i_emb: Any,
        i_gate: Any,
        w1: Any,
        b1: Any,
        w2: Any,
        b2: Any,
        excl: Any,
        out_s: Any,
        out_r: Any,
        start: Any,
        stop: Any,
        inv_tau: Any,
        num_tiles: Any,
        PQ: tl.constexpr,
        PX: tl.constexpr,
        D: tl.constexpr,
        H: tl.constexpr,
        L: tl.constexpr,
        BLOCK_N: tl.constexpr,
        K: tl.constexpr,
    ) -> None:
        qb = tl.program_id(0)
        t = tl.program_id(1)
        P: tl.constexpr = PQ * PX
        rows = start + t * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        valid = rows < stop
        p = tl.arange(0, P)  # (P,) component index a * Px + b
        dd = tl.arange(0, D)
        f = tl.load(q_emb + qb * PQ * D + (p // PX)[:, None] * D + dd[None, :])  # (P, D): f_a per pair
        g = tl.load(
            i_emb + rows[:, None, None] * (PX * D) + (p % PX)[None, :, None] * D + dd[None, None, :],
            mask=valid[:, None, None],
            other=0.0,
        )  # (BN, P, D): g_b per pair
        logits = tl.sum(g * f[None, :, :], axis=2) * inv_tau  # (BN, P)
        hh = tl.arange(0, H)
        w1t = tl.load(w1 + hh[None, :] * P + p[:, None])  # (P, H) = W1^T
        hid = tl.dot(logits, w1t, input_precision="ieee") + tl.load(b1 + hh)[None, :]  # (BN, H)
        hid = hid * tl.sigmoid(hid)  # SiLU
        w2t = tl.load(w2 + p[None, :] * H + hh[:, None])  # (H, P) = W2^T
        pair = tl.dot(hid, w2t, input_precision="ieee") + tl.load(b2 + p)[None, :]  # (BN, P)
        qg = tl.load(q_gate + qb * P + p)  # (P,)
        ig = tl.load(i_gate + rows[:, None] * P + p[None, :], mask=valid[:, None], other=0.0)  # (BN, P)
        z = qg[None, :] * ig + pair
        z = z * tl.sigmoid(z)  # SiLU
        z = z - tl.max(z, axis=1)[:, None]
        e = tl.exp(z)
        weights = e / tl.sum(e, axis=1)[:, None]  # (BN, P) softmax
        score = tl.sum(weights * logits, axis=1)  # (BN,)
        if L > 0:
            ex = tl.load(excl + qb * L + tl.arange(0, L))  # (L,) excluded rows, -1 padding
            hit = tl.sum((rows[:, None] == ex[None, :]).to(tl.int32), axis=1) > 0
            score = tl.where(hit, float("-inf"), score)
        score = tl.where(valid, score, float("-inf"))
        base = (qb * num_tiles + t) * K
        for i in tl.static_range(K):  # the tile's top-k, best first; ties: the smaller row first
            best = tl.max(score, axis=0)
            row = tl.min(tl.where(score == best, rows, _BIG_ROW), axis=0)
            tl.store(out_s + base + i, best)
            tl.store(out_r + base + i, row.to(tl.int64))
            score = tl.where(rows == row, float("-inf"), score)


def _pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def unsupported_reason(similarity: object, block_items: int = 16) -> str | None:
    """Why the kernel cannot score ``similarity`` (a sentence), or ``None`` when it can.

    The kernel needs Triton, a ``MoLSimilarity``, and ``P``, ``d``, the gating hidden width and
    ``block_items`` powers of two with ``P``, the hidden width and ``block_items`` at least 16.
    """
    if not TRITON_AVAILABLE:
        return "the Triton kernel needs triton: pip install 'mol-index[triton]'"
    if not isinstance(similarity, MoLSimilarity):
        return f"the Triton kernel scores MoLSimilarity only, not {type(similarity).__name__}"
    num_p, dim = similarity.num_components, similarity.component_dim
    hidden = similarity.gating.logits_mlp.hidden.out_features
    if (
        not (_pow2(num_p) and _pow2(dim) and _pow2(hidden) and _pow2(block_items))
        or min(num_p, hidden, block_items) < 16
    ):
        return (
            f"the Triton kernel needs P = {num_p}, d = {dim}, gating hidden = {hidden} and block_items = "
            f"{block_items} to be powers of two, with P, hidden and block_items >= 16; use exact_search"
        )
    return None


def triton_exact_search(
    similarity: MoLSimilarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    *,
    exclude: Exclude | None = None,
    block_items: int = 16,
    chunk_items: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MoL top-k by the fused Triton kernel; same contract as
    :func:`~mol_index.search.exact.exact_search`.

    Args:
        similarity: a ``MoLSimilarity`` (eval mode).
        query: ``B`` queries, ``(B, Pq, d)`` embeddings and ``(B, P)`` gating, float32.
        corpus: ``(N, Px, d)`` embeddings and ``(N, P)`` gating, float32, on the query's device.
        k: results per query, ``1 <= k <= N``.
        exclude: corpus rows to leave out per query (``(B, L)`` with ``-1`` padding, or lists).
        block_items: ``BLOCK_N``, items per program (a power of two, at least 16).
        chunk_items: items per kernel launch (bounds the per-tile result buffer).

    Returns:
        ``(scores, rows)``, both ``(B, k)``; ``-inf`` / ``-1`` where fewer than ``k`` items remain.

    Raises:
        ConfigError: Triton is not installed, the tensors are on the CPU without ``TRITON_INTERPRET=1``,
            or the shapes do not meet the kernel's requirements (module docstring).
    """
    reason = unsupported_reason(similarity, block_items)
    if reason is not None:
        raise ConfigError(reason)
    assert isinstance(similarity, MoLSimilarity)
    if query.gating is None or corpus.gating is None:
        raise ConfigError("triton_exact_search needs query and item gating features (MoL)")
    device = query.embeddings.device
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            "the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 to test it on the CPU)"
        )
    mlp = similarity.gating.logits_mlp
    num_q, num_x, dim = (
        similarity.num_query_components,
        similarity.num_item_components,
        similarity.component_dim,
    )
    hidden = mlp.hidden.out_features
    num_items = corpus.num_items
    check_k(k, num_items)
    batch = query.batch_size
    excluded = exclusion_tensor(exclude, batch)
    num_excl = 0 if excluded is None else 1 << max(0, (excluded.shape[1] - 1).bit_length())
    excl = torch.full((batch, max(num_excl, 1)), -1, dtype=torch.int64, device=device)
    if excluded is not None:
        excl[:, : excluded.shape[1]] = excluded.to(device)
    per_tile = min(k, block_items)
    q_emb, q_gate = query.embeddings.float().contiguous(), query.gating.float().contiguous()
    i_emb, i_gate = corpus.embeddings.float().contiguous(), corpus.gating.float().contiguous()
    weights = [
        t.detach().float().contiguous()
        for t in (mlp.hidden.weight, mlp.hidden.bias, mlp.out.weight, mlp.out.bias)
    ]
    running = (
        torch.full((batch, k), float("-inf"), dtype=torch.float32, device=device),
        torch.full((batch, k), -1, dtype=torch.int64, device=device),
    )
    for start in range(0, num_items, chunk_items):
        stop = min(start + chunk_items, num_items)
        tiles = -(-(stop - start) // block_items)
        out_s = torch.empty(batch, tiles, per_tile, dtype=torch.float32, device=device)
        out_r = torch.empty(batch, tiles, per_tile, dtype=torch.int64, device=device)
        _mol_tile_topk_kernel[(batch, tiles)](
            q_emb,
            q_gate,
            i_emb,
            i_gate,
            *weights,
            excl,
            out_s,
            out_r,
            start,
            stop,
            1.0 / similarity.temperature,
            tiles,
            PQ=num_q,
            PX=num_x,
            D=dim,
            H=hidden,
            L=num_excl,
            BLOCK_N=block_items,
            K=per_tile,
        )
        running = merge_topk(running, (out_s.view(batch, -1), out_r.view(batch, -1)), k)  # (B, k)
    return running
