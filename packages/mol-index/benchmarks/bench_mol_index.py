r"""Recall and latency of exact and RAILS MoL top-k on synthetic clustered corpora (or a model bundle).

    python packages/mol-index/benchmarks/bench_mol_index.py --quick --output bench-results/mol_index.json
    python packages/mol-index/benchmarks/bench_mol_index.py --output bench-results/mol_index.json \
        --plot docs/img/mol_index_recall_latency.png          # full: N = 1e4, 1e5, 1e6

Corpus: :func:`mol_index.evaluation.synthetic_corpus` (Pq x Px x d = 8 x 4 x 64, random-weight gating), or
a bundle's items with queries from real histories (``--bundle``, ``--histories``), optionally resampled to
``--bundle-items`` items made by its item tower from perturbed copies of its item representations (a
corpus of any size from a trained model).

For every candidate stage, algorithm and ``K'`` (and the linearized search,
:mod:`mol_index.search.linearized`, at each ``--linearized`` setting): recall@k against the exact top-k
(same run), the hit rate of the exact top-1 (the exact best item is among the ``k`` returned), the
fraction of queries the bound proves exact, mean candidates reranked, latency p50/p99 per batch at B = 1
and B = 32, and the speedup over exact brute force (:func:`~mol_index.search.exact.exact_search`) at the
same B, in the same run, and each row's p50 over that of a FAISS ``IndexFlatIP`` scan of the mean item
embeddings (the dot-product search over the same ``N`` and ``d``, timed in the same run, row
``faiss_flat_mean``); the peak resident memory of the process while each index is built and while it is
searched (:func:`~mol_index.evaluation.peak_rss`; it includes the corpus and queries already in memory).
The speedups and flat ratios above come from timings minutes apart (exact first, each stage after its
build); every row also gets them from timings interleaved with exact search and with the flat scan on the
first ``adjacent_b1`` single queries and ``adjacent_b32`` batches (``speedup_adjacent_b1`` / ``_b32``,
``vs_flat_adjacent_b1`` / ``_b32``, :func:`~mol_index.evaluation.interleaved_cpu_ratio`), which a drift
in a shared machine's speed moves little. Where the fused C++ CPU kernel runs, row ``exact_cpu_kernel``
is exact search through it (:func:`~mol_index.kernels.mol_cpu.cpu_exact_search`); its speedup is over
the torch scan, so a row's speedup over the faster exact search is the row's speedup over this one's;
every later row is also timed interleaved with it (``speedup_kernel_adjacent_b1`` / ``_b32``, medians,
and ``speedup_kernel_adjacent_min_*``, minimum over minimum).
Exit status 1 when a result the bound proved exact (or an exact-guaranteed search) differs from exact
search, and with ``--targets`` when no linearized row over a trained bundle's corpus of at least 1e6
items meets issue #15's item 2 (:func:`target_verdicts`). ``--record BUNDLE`` is the N = 1e6 record of
docs/mol-index.md on a trained bundle, with ``--targets`` (``nox -s bench -- --full`` runs it when
``MOL_BENCH_BUNDLE`` names the bundle).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import torch

from mol_core.atomic import write_bytes_atomically
from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_index import MolIndex, SearchParams, load_index
from mol_index.evaluation import (
    bundle_corpus,
    cpu_latency,
    faiss_flat_mean,
    interleaved_cpu_ratio,
    machine,
    peak_rss,
    split_queries,
    synthetic_corpus,
    write_result,
)
from mol_index.kernels import mol_cpu
from mol_index.search.exact import exact_search
from mol_index.search.rails import Algorithm, SearchResult

__all__ = ["main", "merge_results", "run"]
_ALGORITHMS = (Algorithm.TOP_K_PER_EMBD, Algorithm.TOP_K_AVG, Algorithm.COMB_TOP_K)
#: The real-history queries of ``--record`` (../shared/data beside the repository).
HISTORIES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ml-1m" / "user_movie_chrono.txt"
#: Issue #15, item 2: approximate top-k of a trained model's items at N >= 1e6, recall@k >= .99 at >= 30x
#: less CPU time than exact search at B = 1 and B = 32, and within 3x of the FAISS flat scan's time.
TARGET_MIN_ITEMS = 1_000_000
TARGET_RECALL = 0.99
TARGET_LESS_CPU = 30.0
TARGET_VS_FLAT = 3.0
#: The linearized setting of the record (docs/mol-index.md): K'avg, K', rounds, nprobe, early nprobe.
RECORD_LINEARIZED = (2000, 2000, 2, 128, 64)


def _index_bytes(index: MolIndex) -> int:
    """Bytes of the item side plus the serialized size of every FAISS index of the stage."""
    corpus = index.corpus
    total = corpus.embeddings.nbytes + (0 if corpus.gating is None else corpus.gating.nbytes)
    stage = index.faiss_stage
    if stage is not None:
        subs = [*stage.component_indexes, stage.mean_index]
        if stage.concatenated_index is not None:
            subs.append(stage.concatenated_index)
        for sub in subs:
            total += int(faiss.serialize_index(sub).nbytes)
    return int(total)


def _bench_corpus(
    label: str,
    sim: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    stages: list[str],
    k_primes: list[int],
    k_primes_avg: list[int],
    batches_b32: int,
    queries_b1: int,
    k: int,
    log: Callable[[str], None],
    *,
    nprobe: int | None = None,
    exact_mean: bool = True,
    linearized: list[tuple[int, int, int, int | None, int | None]] | None = None,
    adjacent_b1: int = 8,
    adjacent_b32: int = 2,
    cache: Path | None = None,
    cache_tag: str = "",
) -> tuple[list[dict[str, Any]], int]:
    """Exact search, then every stage x algorithm x K' on one corpus: (result rows, proven-but-wrong).

    ``linearized``: settings ``(K'_avg, K', rounds, nprobe or None, early nprobe or None)`` of
    linearized-search rows;
    ``adjacent_b1`` / ``adjacent_b32``: single queries and batches of the interleaved ratios; ``cache``: a
    folder where the exact top-k of the queries and each built index are kept and from which a later run
    on the same corpus, queries and stage settings loads them instead (exact search is still timed);
    ``cache_tag`` names what made the corpus and queries (files, seed) in the cache's keys."""
    linearized = linearized or []
    num_items = corpus.num_items
    results: list[dict[str, Any]] = []
    violations = 0
    b32, b1 = split_queries(query, 32, batches_b32), split_queries(query, 1, queries_b1)
    exact_fn = functools.partial(exact_search, sim, corpus=corpus, k=k)
    kernel_fn: Callable[[QuerySide], Any] | None = None  # the kernel's exact scan, once its row exists

    def add_adjacent(row: dict[str, Any], search: Callable[[QuerySide], Any]) -> None:
        """The row's speedups and flat ratios from timings interleaved with exact search and the flat scan
        (and with the kernel's exact scan, where it runs)."""
        for name, batches in (("b1", b1[:adjacent_b1]), ("b32", b32[:adjacent_b32])):
            with torch.inference_mode():
                over_exact = interleaved_cpu_ratio(search, exact_fn, batches)
                over_flat = interleaved_cpu_ratio(search, flat_fn, batches)
                if kernel_fn is not None:
                    over_kernel = interleaved_cpu_ratio(search, kernel_fn, batches)
                    row[f"speedup_kernel_adjacent_{name}"] = over_kernel["ratio_p50"]
                    row[f"speedup_kernel_adjacent_min_{name}"] = over_kernel["ratio_min"]
            row[f"speedup_adjacent_{name}"] = over_exact["ratio_p50"]
            row[f"speedup_adjacent_min_{name}"] = over_exact["ratio_min"]
            row[f"vs_flat_adjacent_{name}"] = 1.0 / over_flat["ratio_p50"]
            row[f"adjacent_queries_{name}"] = len(batches) * (1 if name == "b1" else 32)

    corpus_key = hashlib.sha256(f"{label}|{cache_tag}|{num_items}|{len(b32)}|{k}".encode()).hexdigest()[:16]
    truth_file = None if cache is None else cache / f"{corpus_key}-truth.pt"
    with torch.inference_mode(), peak_rss() as exact_memory:
        if truth_file is not None and truth_file.is_file():
            truth = torch.load(truth_file)  # (Q, k), a tensor this benchmark saved
        else:
            truth = torch.cat([exact_search(sim, q, corpus, k)[1] for q in b32])  # (Q, k)
            if truth_file is not None:
                write_bytes_atomically(truth_file, lambda handle, t=truth: torch.save(t, handle))
        exact_lat = {
            "b1": cpu_latency(functools.partial(exact_search, sim, corpus=corpus, k=k), b1),
            "b32": cpu_latency(functools.partial(exact_search, sim, corpus=corpus, k=k), b32),
        }
    log(
        f"N={num_items}: exact p50 B=1 {exact_lat['b1']['p50_ms']:.1f} ms, "
        f"B=32 {exact_lat['b32']['p50_ms']:.1f} ms, peak RSS {exact_memory['peak_rss_mb']:.0f} MB"
    )
    flat = faiss_flat_mean(corpus)
    flat_fn = functools.partial(flat, k=k)
    with torch.inference_mode():
        flat_ids = torch.cat([flat(q, k) for q in b32])  # (Q, k)
        flat_lat = {
            "b1": cpu_latency(functools.partial(flat, k=k), b1),
            "b32": cpu_latency(functools.partial(flat, k=k), b32),
        }
    results.append(
        {
            "corpus": label,
            "N": num_items,
            "stage": "-",
            "algorithm": "exact",
            "k_prime": num_items,
            "recall": 1.0,
            "top1_hit": 1.0,
            "proven_exact": 1.0,
            "candidates": num_items,
            "b1": exact_lat["b1"],
            "b32": exact_lat["b32"],
            "speedup_b1": 1.0,
            "speedup_b32": 1.0,
            "index_bytes": corpus.embeddings.nbytes
            + (corpus.gating.nbytes if corpus.gating is not None else 0),
            "search_peak_rss_mb": exact_memory["peak_rss_mb"],
            "peak_rss_scope": exact_memory["scope"],
        }
    )
    flat_hits = (flat_ids.unsqueeze(2) == truth.unsqueeze(1)).any(2)  # (Q, k)
    results.append(
        {
            "corpus": label,
            "N": num_items,
            "stage": "-",
            "algorithm": "faiss_flat_mean",
            "k_prime": num_items,
            "recall": float(flat_hits.float().mean()),
            "top1_hit": float((flat_ids == truth[:, :1]).any(1).float().mean()),
            "proven_exact": 0.0,
            "candidates": num_items,
            "b1": flat_lat["b1"],
            "b32": flat_lat["b32"],
            "speedup_b1": exact_lat["b1"]["p50_ms"] / flat_lat["b1"]["p50_ms"],
            "speedup_b32": exact_lat["b32"]["p50_ms"] / flat_lat["b32"]["p50_ms"],
            "index_bytes": num_items * corpus.embeddings.shape[-1] * 4,
        }
    )
    exact_row, flat_row = results[-2:]
    add_adjacent(flat_row, flat_fn)  # its speedup: exact over flat, interleaved
    for name in ("b1", "b32"):
        exact_row[f"speedup_adjacent_{name}"] = exact_row[f"speedup_adjacent_min_{name}"] = 1.0
        exact_row[f"vs_flat_adjacent_{name}"] = flat_row[f"speedup_adjacent_{name}"]
        exact_row[f"adjacent_queries_{name}"] = flat_row[f"adjacent_queries_{name}"]
    for row in (exact_row, flat_row):
        _add_flat_ratio(row, flat_lat)
        log(format_row(row))
    fused_row = _fused_exact_row(sim, corpus, k, truth, b1, b32, exact_lat, label)
    if fused_row is not None:
        add_adjacent(fused_row, functools.partial(mol_cpu.cpu_exact_search, sim, corpus=corpus, k=k))
        assert isinstance(sim, MoLSimilarity)  # the kernel's row exists for MoL only
        kernel_fn = functools.partial(mol_cpu.cpu_exact_search, sim, corpus=corpus, k=k)
        _add_flat_ratio(fused_row, flat_lat)
        results.append(fused_row)
        log(format_row(fused_row))
    for stage in stages:
        search_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build with every core, search with --threads
        start = time.perf_counter()
        with_linearized = bool(linearized) and stage != "torch"
        index_dir = (
            None
            if cache is None
            else cache / f"{corpus_key}-{stage}-mean_{'exact' if exact_mean else stage}-lin_{with_linearized}"
        )
        build_s: float | None = None
        with peak_rss() as build_memory:
            if index_dir is not None and index_dir.is_dir():
                index = load_index(index_dir)
            else:
                index = MolIndex.build(
                    sim,
                    torch.arange(num_items),
                    corpus,
                    stage=stage,
                    hnsw_m=16,
                    ef_construction=80,
                    exact_mean=exact_mean,
                    linearized=with_linearized,
                )
                build_s = time.perf_counter() - start
                if index_dir is not None:
                    index.save(index_dir)
        log(
            f"N={num_items}: {stage} "
            + (f"built in {build_s:.1f} s" if build_s is not None else f"loaded from {index_dir}")
            + f", peak RSS {build_memory['peak_rss_mb']:.0f} MB"
        )
        faiss.omp_set_num_threads(search_threads)
        nlist = int(index.parameters.get("nlist", "0"))
        stage_nprobe = index.faiss_stage.default_nprobe if nlist and index.faiss_stage else None
        Variant = tuple[Algorithm, int, int | None, bool, int, int | None, int | None]
        variants: list[Variant] = [(*v, 1, None, None) for v in _variants(stage, k_primes, k_primes_avg)]
        variants += [(Algorithm.LINEARIZED, kp, ka, False, r, np_, e) for ka, kp, r, np_, e in linearized]
        for algorithm, k_prime, k_prime_avg, guarantee, rounds, own_nprobe, early_nprobe in variants:
            params = SearchParams(
                algorithm=algorithm,
                k_prime=k_prime,
                k_prime_avg=k_prime_avg,
                guarantee_exact=guarantee,
                nprobe=own_nprobe or nprobe or stage_nprobe,
                early_nprobe=early_nprobe,
                ef_search=2 * k_prime,
                rounds=rounds,
            )

            def search(q: QuerySide, p: SearchParams = params, idx: MolIndex = index) -> SearchResult:
                return idx.search_with_info(q, k, params=p)

            with peak_rss() as search_memory:
                found = [search(q) for q in b32]
                lat = {"b1": cpu_latency(search, b1), "b32": cpu_latency(search, b32)}
            ids = torch.cat([r.ids for r in found])  # (Q, k)
            proven = torch.cat([r.exact for r in found])  # (Q,)
            hits = (ids.unsqueeze(2) == truth.unsqueeze(1)).any(2)  # (Q, k)
            wrong = int((proven & (ids != truth).any(1)).sum())
            violations += wrong
            row = {
                "corpus": label,
                "N": num_items,
                "stage": stage,
                "algorithm": algorithm.value
                + (" +guarantee" if guarantee else "")
                + (f" x{rounds}" if algorithm is Algorithm.LINEARIZED else "")
                + (f" early{early_nprobe}" if early_nprobe else ""),
                "rounds": rounds if algorithm is Algorithm.LINEARIZED else None,
                "k_prime": k_prime,
                "k_prime_avg": k_prime_avg or k_prime,
                "recall": float(hits.float().mean()),
                "top1_hit": float((ids == truth[:, :1]).any(1).float().mean()),
                "proven_exact": float(proven.float().mean()),
                "proven_but_different": wrong,
                "candidates": float(torch.cat([r.num_candidates for r in found]).float().mean()),
                "b1": lat["b1"],
                "b32": lat["b32"],
                "speedup_b1": exact_lat["b1"]["p50_ms"] / lat["b1"]["p50_ms"],
                "speedup_b32": exact_lat["b32"]["p50_ms"] / lat["b32"]["p50_ms"],
                "index_bytes": _index_bytes(index),
                "build_s": build_s,  # None: loaded from --cache
                "build_peak_rss_mb": build_memory["peak_rss_mb"],
                "search_peak_rss_mb": search_memory["peak_rss_mb"],
                "peak_rss_scope": search_memory["scope"],
                "nlist": nlist,
                "nprobe": params.nprobe if nlist else None,
                "early_nprobe": early_nprobe if nlist else None,
                "mean_index": index.parameters.get("mean_index", stage),
            }
            _add_flat_ratio(row, flat_lat)
            add_adjacent(row, search)
            results.append(row)
            log(format_row(row))
    return results, violations


def _fused_exact_row(
    sim: Similarity,
    corpus: ItemSide,
    k: int,
    truth: torch.Tensor,
    b1: list[QuerySide],
    b32: list[QuerySide],
    exact_lat: dict[str, dict[str, float]],
    label: str,
) -> dict[str, Any] | None:
    """Exact search through the fused C++ CPU kernel (``exact_cpu_kernel``), or None where it cannot run:
    its speedups are over the torch scan, so an approximate row's speedup over this faster exact search is
    its own speedup divided by this row's."""
    if mol_cpu.unavailable_reason() is not None or mol_cpu.unsupported_reason(sim, b1[0], corpus) is not None:
        return None
    assert isinstance(sim, MoLSimilarity)  # unsupported_reason admits MoL only
    fused = functools.partial(mol_cpu.cpu_exact_search, sim, corpus=corpus, k=k)
    with torch.inference_mode():
        rows = torch.cat([fused(q)[1] for q in b32])  # (Q, k)
        lat = {"b1": cpu_latency(fused, b1), "b32": cpu_latency(fused, b32)}
    hits = (rows.unsqueeze(2) == truth.unsqueeze(1)).any(2)  # (Q, k)
    return {
        "corpus": label,
        "N": corpus.num_items,
        "stage": "-",
        "algorithm": "exact_cpu_kernel",
        "k_prime": corpus.num_items,
        "recall": float(hits.float().mean()),
        "top1_hit": float((rows[:, 0] == truth[:, 0]).float().mean()),
        "proven_exact": 1.0,
        "candidates": corpus.num_items,
        "b1": lat["b1"],
        "b32": lat["b32"],
        "speedup_b1": exact_lat["b1"]["p50_ms"] / lat["b1"]["p50_ms"],
        "speedup_b32": exact_lat["b32"]["p50_ms"] / lat["b32"]["p50_ms"],
        "index_bytes": corpus.embeddings.nbytes + (corpus.gating.nbytes if corpus.gating is not None else 0),
    }


def _add_flat_ratio(row: dict[str, Any], flat_lat: dict[str, Any]) -> None:
    """Adds ``vs_flat_b1`` / ``vs_flat_b32``: the row's p50 over the FAISS flat mean scan's, same B."""
    for batch in ("b1", "b32"):
        row[f"vs_flat_{batch}"] = row[batch]["p50_ms"] / flat_lat[batch]["p50_ms"]


def _variants(
    stage: str, k_primes: list[int], k_primes_avg: list[int]
) -> list[tuple[Algorithm, int, int | None, bool]]:
    """(algorithm, K', K'_avg or None for K', exact-guaranteed) of every row measured for a stage.

    Every algorithm at every ``K'`` (the paper's rows); TopKAvg also at every ``K'_avg``; CombTopK also with
    every larger ``K'_avg`` for its mean part; the exact stages add CombTopK exact-guaranteed.
    """
    variants: list[tuple[Algorithm, int, int | None, bool]] = [
        (a, kp, None, False) for a in _ALGORITHMS for kp in k_primes
    ]
    variants += [(Algorithm.TOP_K_AVG, ka, None, False) for ka in k_primes_avg if ka not in k_primes]
    variants += [(Algorithm.COMB_TOP_K, kp, ka, False) for kp in k_primes for ka in k_primes_avg if ka > kp]
    if stage in ("torch", "flat"):
        variants.append((Algorithm.COMB_TOP_K, k_primes[0], None, True))
    return variants


def _synthetic_of_size(
    num_items: int, num_queries: int, *, seed: int
) -> tuple[Similarity, QuerySide, ItemSide]:
    return synthetic_corpus(num_items, num_queries, seed=seed)


def run(
    *,
    sizes: list[int],
    stages: dict[int, list[str]],
    k_primes: list[int],
    batches_b32: int,
    k_primes_avg: list[int] | None = None,
    nprobe: int | None = None,
    exact_mean: bool = True,
    linearized: list[tuple[int, int, int, int | None, int | None]] | None = None,
    adjacent_b1: int = 8,
    adjacent_b32: int = 2,
    queries_b1: int,
    k: int = 10,
    seed: int = 0,
    bundle: Path | None = None,
    histories: Path | None = None,
    bundle_items: int | None = None,
    bundle_noise: float = 0.5,
    cache: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Runs the benchmark; returns the JSON-ready result (see the module docstring for what is measured).

    With ``bundle_items`` the bundle's items are resampled to that many items made from perturbed copies
    of its item representations (:func:`~mol_index.evaluation.resample_items` with ``noise=bundle_noise``,
    seeded by ``seed``). With ``cache`` the exact top-k and the built indexes are kept there and reused.
    """
    results: list[dict[str, Any]] = []
    violations = 0
    corpora: list[tuple[str, Callable[[int], tuple[Similarity, QuerySide, ItemSide]]]] = [
        ("synthetic", functools.partial(_synthetic_of_size, num_items, seed=seed)) for num_items in sizes
    ]
    if bundle is not None:
        label = f"bundle:{bundle.name}"
        if bundle_items is not None:
            label += f", resampled to {bundle_items} (noise {bundle_noise})"
        make_bundle = functools.partial(
            bundle_corpus, bundle, histories, seed=seed, num_items=bundle_items, noise=bundle_noise
        )
        corpora.append((label, make_bundle))
    for label, make in corpora:
        sim, query, corpus = make(32 * batches_b32)
        num_items = corpus.num_items
        rows, wrong = _bench_corpus(
            label,
            sim,
            query,
            corpus,
            stages.get(num_items, []) if label == "synthetic" else stages[0],
            k_primes,
            k_primes_avg or [],
            batches_b32,
            queries_b1,
            k,
            log,
            nprobe=nprobe,
            exact_mean=exact_mean,
            linearized=linearized,
            adjacent_b1=adjacent_b1,
            adjacent_b32=adjacent_b32,
            cache=cache,
            cache_tag=f"bundle={bundle}|histories={histories}|seed={seed}|noise={bundle_noise}",
        )
        results += rows
        violations += wrong
        log(f"N={num_items}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return {
        "benchmark": "mol_index",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "faiss": faiss.__version__},
        "config": {
            "bundle": None if bundle is None else str(bundle),
            "histories": None if histories is None else str(histories),
            "bundle_items": bundle_items,
            "bundle_noise": None if bundle_items is None else bundle_noise,
            "Pq": 8,
            "Px": 4,
            "d": 64,
            "tau": 0.05,
            "k": k,
            "batches_b32": batches_b32,
            "queries_b1": queries_b1,
            "adjacent_b1": adjacent_b1,
            "adjacent_b32": adjacent_b32,
            "hnsw_m": 16,
            "ef_construction": 80,
            "nprobe": nprobe or "index default, max(8, round(sqrt(nlist) / 2))",
            "nlist": "index default, 4 sqrt(N) at most N / 39",
            "mean_index": "IndexFlatIP (exact)" if exact_mean else "the stage's kind",
            "k_primes_avg": k_primes_avg or [],
            "linearized": [list(v) for v in linearized or []],
            "ef_search": "2K'",
            "faiss_threads": faiss.omp_get_max_threads(),
            "latency": "CPU time of the process per batch (time.process_time), wall time in wall_*",
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "cache": None if cache is None else str(cache),
        },
        "results": results,
        "violations": violations,
    }


HEADER = (
    f"{'N':>8} {'stage':>6} {'algorithm':>24} {'K1/avg':>10} {'recall':>7} {'top1':>5} {'proven':>6} "
    f"{'cands':>7} {'B1 p50':>8} {'B1 p99':>8} {'B32 p50':>8} {'B32 p99':>8} {'x B1':>6} {'x B32':>6} "
    f"{'MB':>7} {'/flat1':>6} {'/flt32':>6} {'adj1':>6} {'adj32':>6} {'/fadj1':>6} {'/fad32':>6} "
    f"{'kadj1':>6} {'kadj32':>6}"
)


def target_verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #15 item 2 for every linearized row over a bundle's corpus of at least ``TARGET_MIN_ITEMS``:
    ``{"row", "recall", "less_cpu_b1", "less_cpu_b32", "vs_flat_b1", "vs_flat_b32", "exact", "misses"}``.

    "Less CPU" is over the fastest exact scan timed beside the row: the fused kernel's
    (``speedup_kernel_adjacent_*``) where it ran, else the torch scan's (``speedup_adjacent_*``); "vs flat"
    is the row's time over the FAISS flat scan's, interleaved (``vs_flat_adjacent_*``). ``misses`` lists
    what falls short (empty: the row meets the item)."""
    verdicts = []
    for row in results:
        eligible = row["corpus"].startswith("bundle:") and row["N"] >= TARGET_MIN_ITEMS
        if not eligible or not row["algorithm"].startswith(Algorithm.LINEARIZED.value):
            continue
        kernel = "speedup_kernel_adjacent_b1" in row
        prefix = "speedup_kernel_adjacent" if kernel else "speedup_adjacent"
        figures = {
            "recall": row["recall"],
            "less_cpu_b1": row.get(f"{prefix}_b1", float("nan")),
            "less_cpu_b32": row.get(f"{prefix}_b32", float("nan")),
            "vs_flat_b1": row.get("vs_flat_adjacent_b1", float("nan")),
            "vs_flat_b32": row.get("vs_flat_adjacent_b32", float("nan")),
        }
        misses = []
        if not figures["recall"] >= TARGET_RECALL:
            misses.append(f"recall {figures['recall']:.4f} < {TARGET_RECALL}")
        for batch in ("b1", "b32"):
            less, flat = figures[f"less_cpu_{batch}"], figures[f"vs_flat_{batch}"]
            if not less >= TARGET_LESS_CPU:
                misses.append(f"{less:.1f}x < {TARGET_LESS_CPU:.0f}x less CPU at {batch}")
            if not flat <= TARGET_VS_FLAT:
                misses.append(f"{flat:.2f}x > {TARGET_VS_FLAT:.0f}x FAISS flat at {batch}")
        label = f"{row['stage']} {row['algorithm']} K'avg={row['k_prime_avg']} K'={row['k_prime']}"
        verdicts.append(
            {
                "row": f"{label} nprobe={row['nprobe']}",
                **figures,
                "exact": "fused kernel" if kernel else "torch scan",
                "misses": misses,
            }
        )
    return verdicts


def _k_label(row: dict[str, Any]) -> str:
    """``K'``, or ``K'/K'_avg`` when the TopKAvg part of a row took its own candidate count."""
    k_prime_avg = row.get("k_prime_avg", row["k_prime"])
    return str(row["k_prime"]) if k_prime_avg == row["k_prime"] else f"{row['k_prime']}/{k_prime_avg}"


def format_row(row: dict[str, Any]) -> str:
    """One table line of a result row (latencies in ms, speedups over exact at the same B)."""
    nan = float("nan")
    return (
        f"{row['N']:>8} {row['stage']:>6} {row['algorithm']:>24} {_k_label(row):>10} {row['recall']:>7.4f} "
        f"{row['top1_hit']:>5.3f} {row['proven_exact']:>6.3f} {row['candidates']:>7.0f} "
        f"{row['b1']['p50_ms']:>8.2f} {row['b1']['p99_ms']:>8.2f} {row['b32']['p50_ms']:>8.1f} "
        f"{row['b32']['p99_ms']:>8.1f} {row['speedup_b1']:>6.1f} {row['speedup_b32']:>6.1f} "
        f"{row['index_bytes'] / 1e6:>7.0f} {row.get('vs_flat_b1', nan):>6.2f} "
        f"{row.get('vs_flat_b32', nan):>6.2f} {row.get('speedup_adjacent_b1', nan):>6.1f} "
        f"{row.get('speedup_adjacent_b32', nan):>6.1f} {row.get('vs_flat_adjacent_b1', nan):>6.2f} "
        f"{row.get('vs_flat_adjacent_b32', nan):>6.2f} {row.get('speedup_kernel_adjacent_b1', nan):>6.1f} "
        f"{row.get('speedup_kernel_adjacent_b32', nan):>6.1f}"
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """Recall@k against B = 32 p50 latency, one panel per N; colour = stage, line style = algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"torch": "tab:blue", "flat": "tab:orange", "ivf": "tab:green", "hnsw": "tab:red"}
    styles = {"topk_per_embd": ("-", "o"), "topk_avg": (":", "s"), "comb_topk": ("--", "^")}
    sizes = sorted({r["N"] for r in result["results"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, num_items in zip(axes[0], sizes, strict=True):
        rows = [r for r in result["results"] if r["N"] == num_items]
        exact = next(r for r in rows if r["algorithm"] == "exact")
        handles["exact brute force"] = ax.axvline(exact["b32"]["p50_ms"], color="black", linestyle="-.")
        for stage, colour in colours.items():
            for algorithm, (style, marker) in styles.items():
                mine = [r for r in rows if r["stage"] == stage and r["algorithm"] == algorithm]
                # CombTopK rows whose TopKAvg part took its own K'_avg form one more line per K'_avg
                by_avg: dict[int | None, list[dict[str, Any]]] = {}
                for r in mine:
                    own = r.get("k_prime_avg", r["k_prime"])
                    by_avg.setdefault(None if own == r["k_prime"] else own, []).append(r)
                for avg, line in sorted(by_avg.items(), key=lambda kv: kv[0] or 0):
                    line.sort(key=lambda r: r["k_prime"])
                    label = f"{stage} {algorithm}" + ("" if avg is None else f", K'avg={avg}")
                    (handles[label],) = ax.plot(
                        [r["b32"]["p50_ms"] for r in line],
                        [r["recall"] for r in line],
                        color=colour,
                        linestyle=style if avg is None else (0, (3, 1, 1, 1)),
                        marker=marker if avg is None else "D",
                    )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("single-core CPU time per batch of 32 queries, p50 (ms, log scale)")
        ax.set_ylabel(f"recall@{result['config']['k']} vs exact")
        ax.set_title(f"N = {num_items:,}")
        ax.axhline(0.99, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result with the rows of every given result, in order, and the first one's config.

    A row measured again in a later result (same N, stage, algorithm, ``K'``, ``K'_avg`` and mean index)
    is dropped: the first measurement is kept.
    """
    if not results:
        raise ConfigError("no benchmark results to merge")
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results:
        for row in result["results"]:
            key = (
                row["N"],
                row["stage"],
                row["algorithm"],
                row["k_prime"],
                row.get("k_prime_avg", row["k_prime"]),
                row.get("mean_index"),
            )
            rows.setdefault(key, row)
    return {**results[0], "results": list(rows.values())}


def _linearized_setting(text: str) -> tuple[int, int, int, int | None, int | None]:
    """``K_AVG,K,ROUNDS[,NPROBE[,EARLY_NPROBE]]`` -> a linearized-search setting (argparse type)."""
    parts = text.split(",")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (3, 4, 5) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"expected K_AVG,K,ROUNDS[,NPROBE[,EARLY_NPROBE]] (positive integers); got {text!r}"
        )
    optional = [*numbers[3:], None, None]
    return numbers[0], numbers[1], numbers[2], optional[0], optional[1]


def main(argv: list[str] | None = None) -> int:
    """CLI of the benchmark; exit 1 when a result the bound proved exact differs from exact search."""
    parser = argparse.ArgumentParser(
        prog="bench_mol_index.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 10,000 only, fewer queries (CI, under 3 minutes)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        help="synthetic corpus sizes (default 10,000 100,000 1,000,000); none with --bundle: only the bundle",
    )
    parser.add_argument("--k-primes", type=int, nargs="+", help="K' values (default 16 64 256; quick: 16 64)")
    parser.add_argument(
        "--k-primes-avg",
        type=int,
        nargs="*",
        help="K'_avg values: extra TopKAvg rows, and CombTopK rows whose TopKAvg part takes this larger "
        "K'_avg (default 1024; quick: 256; none: the paper's rows only)",
    )
    parser.add_argument(
        "--nprobe", type=int, help="IVF lists visited (default: the index's, max(8, round(sqrt(nlist) / 2)))"
    )
    parser.add_argument(
        "--linearized",
        type=_linearized_setting,
        nargs="*",
        help="linearized-search rows as K_AVG,K,ROUNDS[,NPROBE[,EARLY_NPROBE]] (default 512,512,2; quick "
        "128,128,2; none: no such rows; EARLY_NPROBE: the IVF lists of every round but the last); FAISS "
        "stages then also build the concatenated-components index",
    )
    parser.add_argument(
        "--approximate-mean",
        action="store_true",
        help="build the FAISS stages' mean index with the stage's kind (IVF, HNSW) instead of exact "
        "IndexFlatIP",
    )
    parser.add_argument(
        "--stages", nargs="+", help="candidate stages for N <= 100,000 (default torch flat ivf hnsw)"
    )
    parser.add_argument(
        "--large-stages",
        nargs="+",
        default=["ivf", "hnsw"],
        help="candidate stages for N > 100,000, where the brute-force stages are as slow as "
        "exact search (default ivf hnsw)",
    )
    parser.add_argument("--batches", type=int, help="batches of 32 queries (default 5; quick 2)")
    parser.add_argument("--b1-queries", type=int, help="single queries timed at B = 1 (default 30; quick 10)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and FAISS threads (default 1: latencies are then single-core CPU times, robust to other "
        "jobs on a shared machine; with torch and FAISS both spinning OpenMP threads on 2 cores each switch "
        "between them cost about 9 ms)",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="also benchmark the items of this mol-train model bundle (e.g. an ML-1M export), with the "
        "stages of --stages and queries from its encoder",
    )
    parser.add_argument(
        "--histories",
        type=Path,
        help="'user item' per line chronological file (e.g. ml-1m/user_movie_chrono.txt) whose users' "
        "histories (without the last item) are the --bundle queries; default: random 20-item histories",
    )
    parser.add_argument(
        "--bundle-items",
        type=int,
        help="resample the --bundle's items to this many, made by its item tower from perturbed copies of "
        "its item representations (mol_index.evaluation.resample_items); above 100,000: --large-stages",
    )
    parser.add_argument(
        "--bundle-noise",
        type=float,
        default=0.5,
        help="perturbation of the --bundle-items representations, in units of each dimension's spread "
        "(default 0.5)",
    )
    parser.add_argument(
        "--adjacent-b1",
        type=int,
        default=8,
        help="single queries of the interleaved ratios (speedup_adjacent_b1 etc.; default 8)",
    )
    parser.add_argument(
        "--adjacent-batches",
        type=int,
        default=2,
        help="batches of 32 of the interleaved ratios (speedup_adjacent_b32 etc.; default 2)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the exact top-k of the queries and every built index in this folder, and load them from "
        "it when a later run has the same corpus, queries and stage settings (exact search is still timed; "
        "a loaded index's row has build_s null)",
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="exit 1 unless a linearized row over a bundle's corpus of >= 1e6 items meets issue #15's item 2 "
        "(recall@k >= .99, >= 30x less CPU than the fastest exact scan at B = 1 and 32, <= 3x FAISS flat)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="BUNDLE",
        help="the record run of docs/mol-index.md on this trained bundle, with --targets: its items "
        "resampled to 1e6 (noise 1.0), queries from ML-1M histories (--histories, default ../shared/data), "
        "IVF stages with an IVF mean index, RAILS at K' 256, the linearized search at "
        + ",".join(str(v) for v in RECORD_LINEARIZED)
        + ", 16 batches of 32 and 32 single queries",
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON to this path")
    parser.add_argument("--plot", type=Path, help="write a recall-vs-latency PNG here (needs matplotlib)")
    parser.add_argument(
        "--plot-from",
        type=Path,
        nargs="+",
        help="measure nothing: draw --plot from these result JSON files (their rows merged, e.g. runs "
        "split by size or stage)",
    )
    args = parser.parse_args(argv)
    if args.plot_from:
        if args.plot is None:
            parser.error("--plot-from needs --plot (where to draw)")
        plot(merge_results([json.loads(path.read_text()) for path in args.plot_from]), args.plot)
        return 0
    if args.record is not None:
        given = [
            flag
            for flag, value in (
                ("--sizes", args.sizes),
                ("--bundle", args.bundle),
                ("--bundle-items", args.bundle_items),
                ("--linearized", args.linearized),
                ("--k-primes", args.k_primes),
                ("--quick", args.quick or None),
            )
            if value is not None
        ]
        if given:
            parser.error(f"--record sets the corpus and the rows itself; drop {', '.join(given)}")
        args.sizes, args.bundle, args.bundle_items, args.bundle_noise = [], args.record, 1_000_000, 1.0
        args.histories = args.histories or HISTORIES
        args.large_stages, args.approximate_mean = ["ivf"], True
        args.k_primes, args.k_primes_avg, args.linearized = [256], [], [RECORD_LINEARIZED]
        args.batches, args.b1_queries, args.targets = 16, 32, True
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sizes = (
        args.sizes if args.sizes is not None else ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    if not sizes and args.bundle is None:
        parser.error("--sizes without values needs --bundle (there would be nothing to measure)")
    small = args.stages or ["torch", "flat", "ivf", "hnsw"]
    stages = {n: (small if n <= 100_000 else list(args.large_stages)) for n in sizes}
    large_bundle = args.bundle_items is not None and args.bundle_items > 100_000
    stages[0] = list(args.large_stages) if large_bundle else small  # the bundle's corpus
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    if args.histories is not None and args.bundle is None:
        parser.error("--histories needs --bundle")
    if args.bundle_items is not None and args.bundle is None:
        parser.error("--bundle-items needs --bundle")
    if args.bundle_items is not None and args.bundle_items < 1:
        parser.error(f"--bundle-items must be a positive integer; got {args.bundle_items}")
    if not args.bundle_noise >= 0:
        parser.error(f"--bundle-noise must be >= 0; got {args.bundle_noise}")
    print(HEADER, flush=True)
    result = run(
        sizes=sizes,
        stages=stages,
        k_primes=args.k_primes or ([16, 64] if args.quick else [16, 64, 256]),
        k_primes_avg=([256] if args.quick else [1024]) if args.k_primes_avg is None else args.k_primes_avg,
        nprobe=args.nprobe,
        linearized=([(128, 128, 2, None, None)] if args.quick else [(512, 512, 2, None, None)])
        if args.linearized is None
        else args.linearized,
        exact_mean=not args.approximate_mean,
        batches_b32=args.batches or (2 if args.quick else 5),
        queries_b1=args.b1_queries or (10 if args.quick else 30),
        bundle=args.bundle,
        histories=args.histories,
        bundle_items=args.bundle_items,
        bundle_noise=args.bundle_noise,
        adjacent_b1=args.adjacent_b1,
        adjacent_b32=args.adjacent_batches,
        cache=args.cache,
        log=lambda line: print(line, flush=True),
    )
    result["mode"] = "quick" if args.quick else "full"
    if args.targets:
        result["targets"] = target_verdicts(result["results"])
    if args.output:
        write_result(result, args.output)
    if args.plot:
        plot(result, args.plot)
    if result["violations"]:
        print(f"FAIL: {result['violations']} results proven exact differ from exact search", file=sys.stderr)
        return 1
    bad = [r for r in result["results"] if "guarantee" in r["algorithm"] and r["recall"] < 1.0]
    if bad:
        print(f"FAIL: exact-guaranteed search missed exact results: {bad}", file=sys.stderr)
        return 1
    if args.targets:
        return _report_targets(result["targets"])
    return 0


def _report_targets(verdicts: list[dict[str, Any]]) -> int:
    """Prints issue #15 item 2's verdict per row; 0 when a row meets it, else 1."""
    print("\nissue #15 item 2 (recall >= .99, >= 30x less CPU than exact at B = 1 and 32, <= 3x FAISS flat):")
    for verdict in verdicts:
        figures = (
            f"recall {verdict['recall']:.4f}, {verdict['less_cpu_b1']:.1f}x / {verdict['less_cpu_b32']:.1f}x "
            f"less CPU than the {verdict['exact']}, "
            f"{verdict['vs_flat_b1']:.2f}x / {verdict['vs_flat_b32']:.2f}x FAISS flat"
        )
        state = "MET" if not verdict["misses"] else "missed: " + "; ".join(verdict["misses"])
        print(f"  {verdict['row']}: {figures}: {state}")
    if not verdicts:
        print("FAIL: no linearized row over a bundle's corpus of >= 1e6 items to check", file=sys.stderr)
        return 1
    if all(verdict["misses"] for verdict in verdicts):
        print("FAIL: no row meets issue #15's item 2", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
