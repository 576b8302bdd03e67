"""Helpers that evaluate an index: synthetic corpora, real queries from a bundle, recall, latency, machine.

Used by the benchmark drivers in ``packages/mol-index/benchmarks/`` and by tests. Shape symbols: ``B``
queries, ``N`` items, ``Pq``/``Px`` components, ``P = Pq * Px``, ``d`` dimension.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import torch

from mol_core.atomic import write_text_atomically
from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity

__all__ = [
    "bundle_corpus",
    "cpu_latency",
    "faiss_flat_mean",
    "interleaved_cpu_ratio",
    "machine",
    "peak_rss",
    "read_histories",
    "recall",
    "resample_items",
    "split_queries",
    "synthetic_corpus",
    "write_result",
]

_REPR_DIM = 32


def synthetic_corpus(
    num_items: int, num_queries: int, *, pq: int = 8, px: int = 4, dim: int = 64, seed: int = 0
) -> tuple[MoLSimilarity, QuerySide, ItemSide]:
    """A random-weight MoL, ``(B, Pq, d)`` queries and a clustered ``(N, Px, d)`` corpus.

    ``N`` items in clusters of about 200; item ``x`` of cluster ``c`` has components
    ``g_b(x) = normalize(center[c, b] + noise)`` (noise norm about 0.5, cosine to its center about 0.9);
    each query has two interest clusters and each of its ``Pq`` components lies near one component center
    of one of them. The gating MLPs have random (untrained) weights; item and query gating features come
    from random cluster-correlated representations. tau = 0.05.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sim = MoLSimilarity(
        query_input_dim=_REPR_DIM,
        item_input_dim=_REPR_DIM,
        query_components=pq,
        item_components=px,
        component_dim=dim,
    ).eval()
    clusters = max(8, num_items // 200)
    centers = torch.nn.functional.normalize(torch.randn(clusters, px, dim, generator=gen), dim=-1)
    cluster_repr = torch.randn(clusters, _REPR_DIM, generator=gen)
    assign = torch.randint(0, clusters, (num_items,), generator=gen)
    emb = torch.empty(num_items, px, dim)
    gating = torch.empty(num_items, pq * px)
    with torch.inference_mode():
        for start in range(0, num_items, 65536):  # chunks keep the temporary noise small at N = 1e6
            c = assign[start : start + 65536]
            noise = torch.randn(len(c), px, dim, generator=gen) * (0.5 / dim**0.5)
            emb[start : start + len(c)] = torch.nn.functional.normalize(centers[c] + noise, dim=-1)
            reprs = cluster_repr[c] + torch.randn(len(c), _REPR_DIM, generator=gen)
            gating[start : start + len(c)] = sim.gating.item_features(reprs)
        interests = torch.randint(0, clusters, (num_queries, 2), generator=gen)
        pick = interests.gather(1, torch.randint(0, 2, (num_queries, pq), generator=gen))  # (B, Pq)
        comp = torch.randint(0, px, (num_queries, pq), generator=gen)
        noise = torch.randn(num_queries, pq, dim, generator=gen) * (0.5 / dim**0.5)
        f = torch.nn.functional.normalize(centers[pick, comp] + noise, dim=-1)  # (B, Pq, d)
        q_repr = cluster_repr[interests[:, 0]] + torch.randn(num_queries, _REPR_DIM, generator=gen)
        query = QuerySide(f, sim.gating.query_features(q_repr))
    return sim, query, ItemSide(emb, gating)


def faiss_flat_mean(corpus: ItemSide) -> Callable[[QuerySide, int], torch.Tensor]:
    """The dot-product scan a MoL search is compared with: FAISS ``IndexFlatIP`` over the mean items.

    Builds an exact inner-product index over ``mean_b g_b(x)`` ``(N, d)`` and returns a search function
    ``(query, k) -> (B, k)`` int64 corpus rows by ``<mean_a f_a(q), mean_b g_b(x)>`` (a two-tower model's
    cost over the same ``N`` and ``d``). The benchmarks time it beside the MoL searches.
    """
    means = corpus.embeddings.float().mean(dim=1).contiguous()  # (N, d)
    index = faiss.IndexFlatIP(means.shape[1])
    index.add(means.numpy())

    def search(query: QuerySide, k: int) -> torch.Tensor:
        vectors = query.embeddings.float().mean(dim=1).contiguous()  # (B, d)
        _, rows = index.search(vectors.numpy(), k)
        return torch.from_numpy(rows).to(torch.int64)

    return search


@contextmanager
def peak_rss() -> Iterator[dict[str, Any]]:
    """Peak resident memory of this process while the ``with`` block runs.

    Yields a dict that holds, after the block, ``peak_rss_mb`` and ``scope``: ``"block"`` when the kernel
    let the peak be reset at the start (Linux: ``/proc/self/clear_refs`` and ``VmHWM``), else
    ``"process"``, the peak since the process started (``getrusage``), an upper bound of the block's.

    Example:
        >>> with peak_rss() as memory:
        ...     buffer = bytearray(50_000_000)
        >>> memory["peak_rss_mb"] >= 50
        True
    """
    memory: dict[str, Any] = {}
    scope = "block" if _reset_peak_rss() else "process"
    try:
        yield memory
    finally:
        high_water_kb = _high_water_kb() if scope == "block" else None
        if high_water_kb is None:
            scope = "process"
            high_water_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
        memory.update(peak_rss_mb=high_water_kb / 1024, scope=scope)


def _reset_peak_rss() -> bool:
    """Resets this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel forbids it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _high_water_kb() is not None


def _high_water_kb() -> int | None:
    """``VmHWM`` of /proc/self/status in KB, or None where there is none."""
    try:
        with open("/proc/self/status") as status:
            found = re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M)
    except OSError:
        return None
    return None if found is None else int(found.group(1))


def _percentiles(times: list[float], prefix: str) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {f"{prefix}p50_ms": 1e3 * statistics.median(ordered), f"{prefix}p99_ms": 1e3 * p99}


def cpu_latency(fn: Callable[[QuerySide], Any], batches: list[QuerySide]) -> dict[str, float]:
    """Runs ``fn`` on each batch after a warm-up call: per-batch CPU time of this process (``p50_ms``,
    ``p99_ms``) and wall time (``wall_p50_ms``, ``wall_p99_ms``).

    CPU time is what the tables report: on a machine shared with other jobs, wall time also counts the
    time this process waits for a core; with one thread CPU time is the latency on an idle core.
    """
    fn(batches[0])  # warm-up
    cpu, wall = [], []
    for batch in batches:
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn(batch)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return {**_percentiles(cpu, ""), **_percentiles(wall, "wall_")}


def interleaved_cpu_ratio(
    fn: Callable[[QuerySide], Any], reference: Callable[[QuerySide], Any], batches: list[QuerySide]
) -> dict[str, float]:
    """``reference``'s CPU time over ``fn``'s, the two run back to back on every batch (which goes first
    alternates) after a warm-up call of each, so that a drift in the machine's speed moves both alike.

    Returns ``ratio_p50`` (median over median), ``ratio_min`` (minimum over minimum), and the per-batch
    CPU times' medians ``p50_ms`` (``fn``) and ``reference_p50_ms``. An empty ``batches`` gives NaNs.
    """
    if not batches:
        nan = float("nan")
        return {"ratio_p50": nan, "ratio_min": nan, "p50_ms": nan, "reference_p50_ms": nan}
    fn(batches[0])
    reference(batches[0])
    mine: list[float] = []
    theirs: list[float] = []
    for position, batch in enumerate(batches):
        order = [(fn, mine), (reference, theirs)]
        for call, times in order if position % 2 == 0 else order[::-1]:
            start = time.process_time()
            call(batch)
            times.append(time.process_time() - start)
    return {
        "ratio_p50": statistics.median(theirs) / max(statistics.median(mine), 1e-9),
        "ratio_min": min(theirs) / max(min(mine), 1e-9),
        "p50_ms": 1e3 * statistics.median(mine),
        "reference_p50_ms": 1e3 * statistics.median(theirs),
    }


def split_queries(query: QuerySide, size: int, count: int) -> list[QuerySide]:
    """The first ``count`` consecutive batches of ``size`` queries of ``query``."""
    gating = query.gating
    return [
        QuerySide(
            query.embeddings[i * size : (i + 1) * size],
            None if gating is None else gating[i * size : (i + 1) * size],
        )
        for i in range(count)
    ]


def read_histories(path: Path, limit: int) -> list[list[int]]:
    """The first ``limit`` users' histories of a "user item" per line chronological text file."""
    by_user: dict[str, list[int]] = {}
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ConfigError(f"{path}:{number}: expected 'user item', got {line.strip()!r}")
            if parts[0] not in by_user and len(by_user) == limit:
                continue
            by_user.setdefault(parts[0], []).append(int(parts[1]))
    return list(by_user.values())


def bundle_corpus(
    bundle_path: Path,
    histories_path: Path | None,
    num_queries: int,
    *,
    seed: int = 0,
    num_items: int | None = None,
    noise: float = 0.5,
) -> tuple[Similarity, QuerySide, ItemSide]:
    """A model bundle's similarity and item side, with ``num_queries`` queries its encoder makes.

    Queries encode real histories when ``histories_path`` is given (each user's history without its last
    item, as in a leave-one-out test; users with fewer than 2 items are skipped), else random histories of
    20 items drawn uniformly from the vocabulary. With ``num_items`` the item side is that many items
    resampled from the bundle's (:func:`resample_items` with ``noise`` and ``seed``).

    Raises:
        ConfigError: too few usable histories, or ``num_items`` with a bundle that stores no
            ``item_representations`` (exported before they were stored: export it again).
    """
    from mol_core.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    known = set(bundle.item_ids)
    if histories_path is not None:
        users = [[i for i in h if i in known] for h in read_histories(histories_path, 4 * num_queries)]
        histories = [h[:-1] for h in users if len(h) >= 2][:num_queries]
        if len(histories) < num_queries:
            raise ConfigError(f"{histories_path}: {len(histories)} usable histories, {num_queries} needed")
    else:
        gen = torch.Generator().manual_seed(seed)
        picks = torch.randint(0, len(bundle.item_ids), (num_queries, 20), generator=gen)
        histories = [[bundle.item_ids[i] for i in row] for row in picks.tolist()]
    with torch.inference_mode():
        query = bundle.encode(histories)
    similarity = bundle.similarity.eval()
    if num_items is None:
        return similarity, query, bundle.items
    if bundle.item_representations is None:
        raise ConfigError(
            f"{bundle_path}: the bundle stores no item_representations to resample from; export it again "
            "with this version of mol-train"
        )
    return (
        similarity,
        query,
        resample_items(similarity, bundle.item_representations, num_items, noise=noise, seed=seed),
    )


def resample_items(
    similarity: Similarity, representations: torch.Tensor, num_items: int, *, noise: float, seed: int = 0
) -> ItemSide:
    """``num_items`` new items made by the trained item tower from perturbed trained item representations.

    Item ``j`` takes the representation of a base item ``i`` drawn uniformly (seeded), adds
    ``noise * std * N(0, 1)`` per dimension (``std``: that dimension's standard deviation over the base
    items) and goes through ``similarity.item_side``: components and gating features stay what the model
    makes of one item, as in a larger catalogue of similar items. The copies form groups around the base
    items, which a real catalogue of that size need not have to the same degree (docs/mol-index.md).

    Args:
        similarity: the trained similarity (``eval()`` mode).
        representations: ``(N0, Dx)`` the base items' representations (a bundle's
            ``item_representations``).
        num_items: ``N``, the size of the new corpus.
        noise: perturbation size in units of each dimension's spread, ``>= 0`` (0 gives exact copies).
        seed: seeds the base items drawn and the noise.

    Returns:
        The new item side: embeddings ``(N, Px, d)``, gating ``(N, P)`` (MoL) or ``None``.

    Raises:
        ConfigError: ``num_items < 1``, a negative ``noise`` or no base representations.
    """
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ConfigError(f"num_items must be a positive integer; got {num_items!r}")
    if not noise >= 0:
        raise ConfigError(f"noise must be >= 0; got {noise!r}")
    if representations.dim() != 2 or representations.shape[0] < 1:
        raise ConfigError(
            f"representations must have shape (N0 >= 1, Dx); got {tuple(representations.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    base = representations.float()
    spread = base.std(dim=0, unbiased=False)  # (Dx,)
    source = torch.randint(0, base.shape[0], (num_items,), generator=gen)  # (N,)
    parts: list[ItemSide] = []
    with torch.inference_mode():
        for start in range(0, num_items, 65536):  # chunks keep the temporaries small at N = 1e6
            rows = source[start : start + 65536]
            jitter = torch.randn(len(rows), base.shape[1], generator=gen) * (noise * spread)
            parts.append(similarity.item_side(base[rows] + jitter))
    gatings = [part.gating for part in parts if part.gating is not None]
    gating = torch.cat(gatings) if len(gatings) == len(parts) else None
    return ItemSide(torch.cat([part.embeddings for part in parts]), gating)


def machine() -> dict[str, Any]:
    """The machine a result was measured on (platform, CPU count, torch and its threads)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean fraction of each row of ``truth`` ``(B, t)`` found in the same row of ``found`` ``(B, k)``."""
    return float((truth.unsqueeze(2) == found.unsqueeze(1)).any(2).float().mean())


def write_result(result: dict[str, Any], path: Path) -> None:
    """Writes a benchmark result as indented JSON, atomically, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(result, indent=2))
