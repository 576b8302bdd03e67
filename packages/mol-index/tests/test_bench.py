"""The index benchmark (benchmarks/bench_mol_index.py) and its corpus on tiny sizes."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide
from mol_index import MolIndex
from mol_index.evaluation import (
    faiss_flat_mean,
    interleaved_cpu_ratio,
    peak_rss,
    resample_items,
    split_queries,
    synthetic_corpus,
)


def test_synthetic_corpus_is_clustered_and_normalised() -> None:
    _, query, corpus = synthetic_corpus(1000, 4, pq=4, px=2, dim=16)
    assert corpus.embeddings.shape == (1000, 2, 16)
    assert query.embeddings.shape == (4, 4, 16)
    norms = corpus.embeddings.norm(dim=-1)
    assert float((norms - 1).abs().max()) < 1e-5
    # each query component is close to some item component (queries sit near clusters)
    best = (query.embeddings.reshape(-1, 16) @ corpus.embeddings.reshape(-1, 16).T).max(dim=1).values
    assert float(best.min()) > 0.7


def test_tiny_run_has_exact_rows_and_no_violations(index_benchmark: ModuleType) -> None:
    result = index_benchmark.run(
        sizes=[300], stages={300: ["torch"]}, k_primes=[8], batches_b32=1, queries_b1=1
    )
    rows = result["results"]
    assert result["violations"] == 0
    assert rows[0]["algorithm"] == "exact"
    # the dot-product reference: a FAISS flat scan of the mean embeddings, timed in the same run
    assert rows[1]["algorithm"] == "faiss_flat_mean"
    assert rows[1]["vs_flat_b1"] == 1.0
    assert rows[1]["vs_flat_b32"] == 1.0
    for row in rows:
        assert row["vs_flat_b32"] == pytest.approx(row["b32"]["p50_ms"] / rows[1]["b32"]["p50_ms"])
        # the interleaved ratios: every row has them, positive, over the requested queries
        assert row["speedup_adjacent_b1"] > 0
        assert row["vs_flat_adjacent_b32"] > 0
        assert row["adjacent_queries_b1"] == 1
        assert row["adjacent_queries_b32"] == 32
    assert rows[0]["speedup_adjacent_b32"] == 1.0
    assert rows[0]["vs_flat_adjacent_b32"] == rows[1]["speedup_adjacent_b32"]
    guaranteed = [r for r in rows if "guarantee" in r["algorithm"]]
    assert len(guaranteed) == 1
    assert guaranteed[0]["recall"] == 1.0
    assert {r["stage"] for r in rows} == {"-", "torch"}
    stage_rows = [r for r in rows if r["stage"] == "torch"]
    assert all(r["build_peak_rss_mb"] > 0 and r["search_peak_rss_mb"] > 0 for r in stage_rows)
    assert rows[0]["search_peak_rss_mb"] > 0


def test_a_second_run_loads_the_cached_truth_and_index_and_measures_the_same(
    index_benchmark: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    exact_search = index_benchmark.exact_search

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return exact_search(*args, **kwargs)

    monkeypatch.setattr(index_benchmark, "exact_search", counted)

    def run() -> tuple[dict, int]:
        before = len(calls)
        result = index_benchmark.run(
            sizes=[400], stages={400: ["ivf"]}, k_primes=[8], batches_b32=2, queries_b1=1, cache=tmp_path
        )
        return result, len(calls) - before

    first, first_calls = run()
    assert sorted(p.name.split("-", 1)[1] for p in tmp_path.iterdir()) == [
        "ivf-mean_exact-lin_False",
        "truth.pt",
    ]
    built = [r for r in first["results"] if r["stage"] == "ivf"]
    assert built
    assert all(r["build_s"] is not None for r in built)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached index was built again")

    monkeypatch.setattr(index_benchmark.MolIndex, "build", no_build)
    second, second_calls = run()
    loaded = [r for r in second["results"] if r["stage"] == "ivf"]
    assert [r["build_s"] for r in loaded] == [None] * len(loaded)
    assert [(r["algorithm"], r["recall"]) for r in loaded] == [(r["algorithm"], r["recall"]) for r in built]
    assert second["config"]["cache"] == str(tmp_path)
    assert first_calls - second_calls == 2  # exact search is still timed; only the truth's 2 batches are not


def test_rows_after_the_kernel_row_are_timed_against_it(index_benchmark: ModuleType) -> None:
    from mol_index.kernels import mol_cpu

    if mol_cpu.unavailable_reason() is not None:
        pytest.skip(f"the CPU kernel does not run here: {mol_cpu.unavailable_reason()}")
    result = index_benchmark.run(
        sizes=[300], stages={300: ["torch"]}, k_primes=[8], batches_b32=1, queries_b1=1
    )
    names = [r["algorithm"] for r in result["results"]]
    after = result["results"][names.index("exact_cpu_kernel") + 1 :]
    assert after
    for row in after:
        assert row["speedup_kernel_adjacent_b1"] > 0
        assert row["speedup_kernel_adjacent_b32"] > 0
        assert row["speedup_kernel_adjacent_min_b32"] > 0
    assert all(
        "speedup_kernel_adjacent_b1" not in r
        for r in result["results"][: names.index("exact_cpu_kernel") + 1]
    )


def test_peak_rss_sees_an_allocation_inside_the_block_only() -> None:
    with peak_rss() as before:
        pass
    with peak_rss() as during:
        buffer = bytearray(200 * 2**20)  # 200 MB, touched by the zero fill
    del buffer
    assert during["peak_rss_mb"] >= 200
    with peak_rss() as after:
        pass
    if during["scope"] == "block":  # the kernel let the peak be reset: a later block does not see it
        assert after["peak_rss_mb"] < during["peak_rss_mb"] - 150
        assert before["peak_rss_mb"] < during["peak_rss_mb"] - 150
    else:  # the process peak since start: never smaller later
        assert after["peak_rss_mb"] >= during["peak_rss_mb"]


def test_k_prime_avg_rows_widen_the_mean_part_only(index_benchmark: ModuleType) -> None:
    result = index_benchmark.run(
        sizes=[400], stages={400: ["torch"]}, k_primes=[4], k_primes_avg=[50], batches_b32=1, queries_b1=1
    )
    rows = {
        (r["algorithm"], r["k_prime"], r["k_prime_avg"]): r for r in result["results"] if r["stage"] != "-"
    }
    assert set(rows) == {
        ("topk_per_embd", 4, 4),
        ("topk_avg", 4, 4),
        ("topk_avg", 50, 50),
        ("comb_topk", 4, 4),
        ("comb_topk", 4, 50),
        ("comb_topk +guarantee", 4, 4),
    }
    # the wider mean part adds candidates to CombTopK's, never removes any
    assert rows["comb_topk", 4, 50]["candidates"] > rows["comb_topk", 4, 4]["candidates"]
    assert rows["comb_topk", 4, 50]["recall"] >= rows["comb_topk", 4, 4]["recall"]
    assert "4/50" in index_benchmark.format_row(rows["comb_topk", 4, 50])


def test_plot_from_merges_result_files(index_benchmark: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    small = index_benchmark.run(
        sizes=[300], stages={300: ["torch"]}, k_primes=[8], batches_b32=1, queries_b1=1
    )
    other = index_benchmark.run(
        sizes=[400], stages={400: ["torch"]}, k_primes=[8], batches_b32=1, queries_b1=1
    )
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, result in zip(paths, [small, other], strict=True):
        path.write_text(json.dumps(result))
    merged = index_benchmark.merge_results([small, other, small])  # the second copy of `small` adds nothing
    assert [r["N"] for r in merged["results"]] == [300] * len(small["results"]) + [400] * len(
        other["results"]
    )
    assert merged["results"][0] is small["results"][0]
    png = tmp_path / "plot.png"
    assert index_benchmark.main(["--plot-from", *map(str, paths), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        index_benchmark.main(["--plot-from", str(paths[0])])  # nowhere to draw


def test_bench_help(index_benchmark: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        index_benchmark.main(["--help"])
    assert "--quick" in capsys.readouterr().out


def test_resample_items_runs_perturbed_representations_through_the_item_tower() -> None:
    torch.manual_seed(0)
    sim = MoLSimilarity(
        query_input_dim=6, item_input_dim=5, query_components=2, item_components=3, component_dim=8
    ).eval()
    base = torch.randn(50, 5)
    exact_copies = resample_items(sim, base, 400, noise=0.0, seed=1)
    assert exact_copies.embeddings.shape == (400, 3, 8)
    assert exact_copies.gating is not None
    assert exact_copies.gating.shape == (400, 6)
    # with no noise every new item is the item side of one base item, components and gating together
    with torch.inference_mode():
        reference = sim.item_side(base)
    flat_base = torch.cat([reference.embeddings.flatten(1), reference.gating], dim=1)  # (50, 30)
    flat_new = torch.cat([exact_copies.embeddings.flatten(1), exact_copies.gating], dim=1)  # (400, 30)
    distance = (flat_new.unsqueeze(1) - flat_base.unsqueeze(0)).abs().amax(dim=-1).min(dim=1).values  # (400,)
    assert float(distance.max()) < 1e-5
    noisy = resample_items(sim, base, 400, noise=0.5, seed=1)
    assert float((noisy.embeddings.norm(dim=-1) - 1).abs().max()) < 1e-5  # the tower's unit-norm components
    flat_noisy = torch.cat([noisy.embeddings.flatten(1), noisy.gating], dim=1)
    assert (
        float((flat_noisy.unsqueeze(1) - flat_base.unsqueeze(0)).abs().amax(dim=-1).min(dim=1).values.min())
        > 1e-3
    )
    # the same seed gives the same corpus, another seed another
    assert torch.equal(resample_items(sim, base, 400, noise=0.5, seed=1).embeddings, noisy.embeddings)
    assert not torch.equal(resample_items(sim, base, 400, noise=0.5, seed=2).embeddings, noisy.embeddings)
    for bad in ({"num_items": 0, "noise": 0.1}, {"num_items": 10, "noise": -1.0}):
        with pytest.raises(ConfigError):
            resample_items(sim, base, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="representations"):
        resample_items(sim, torch.randn(5), 10, noise=0.1)


def test_faiss_flat_mean_ranks_by_mean_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    corpus = ItemSide(torch.randn(200, 3, 8, generator=gen), None)
    query = QuerySide(torch.randn(4, 2, 8, generator=gen), None)
    search = faiss_flat_mean(corpus)
    found = search(query, 5)
    naive = (query.embeddings.mean(1) @ corpus.embeddings.mean(1).T).topk(5, dim=1).indices
    assert torch.equal(found, naive)


def test_interleaved_ratio_sees_a_slower_contender() -> None:
    _, query, _ = synthetic_corpus(50, 4, pq=2, px=2, dim=8)
    batches = split_queries(query, 1, 4)

    def spin(seconds: float) -> Callable[[QuerySide], None]:
        def run(_: QuerySide) -> None:
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass

        return run

    ratio = interleaved_cpu_ratio(spin(0.004), spin(0.012), batches)
    assert 2.0 < ratio["ratio_p50"] < 4.5  # the reference burns 3x the CPU
    assert 2.0 < ratio["ratio_min"] < 4.5
    assert ratio["p50_ms"] == pytest.approx(4.0, rel=0.5)
    assert math.isnan(interleaved_cpu_ratio(spin(0.0), spin(0.0), [])["ratio_p50"])


def test_index_bytes_count_the_concatenated_index(index_benchmark: ModuleType) -> None:
    sim, _, corpus = synthetic_corpus(400, 1, pq=4, px=2, dim=16)
    ids = torch.arange(400)
    plain = MolIndex.build(sim, ids, corpus, stage="flat")
    linearized = MolIndex.build(sim, ids, corpus, stage="flat", linearized=True)
    vectors = 400 * (2 * 16 + 8) * 4  # the linearized item vectors, Px * d + P float32 each
    extra = index_benchmark._index_bytes(linearized) - index_benchmark._index_bytes(plain)
    assert vectors <= extra <= vectors + 4096  # plus FAISS's header


def test_linearized_settings_parse_with_optional_nprobes(index_benchmark: ModuleType) -> None:
    import argparse

    parse = index_benchmark._linearized_setting
    assert parse("2000,1000,2") == (2000, 1000, 2, None, None)
    assert parse("2000,1000,2,128") == (2000, 1000, 2, 128, None)
    assert parse("2000,1000,2,128,64") == (2000, 1000, 2, 128, 64)
    for bad in ("2000,1000", "2000,1000,2,128,64,1", "2000,0,2", "a,b,c"):
        with pytest.raises(argparse.ArgumentTypeError, match="K_AVG,K,ROUNDS"):
            parse(bad)


def _target_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "corpus": "bundle:b, resampled to 1000000 (noise 1.0)",
        "N": 1_000_000,
        "stage": "ivf",
        "algorithm": "linearized x2",
        "k_prime": 2000,
        "k_prime_avg": 2000,
        "nprobe": 128,
        "recall": 0.995,
        "speedup_kernel_adjacent_b1": 31.0,
        "speedup_kernel_adjacent_b32": 35.0,
        "speedup_adjacent_b1": 80.0,
        "speedup_adjacent_b32": 90.0,
        "vs_flat_adjacent_b1": 0.8,
        "vs_flat_adjacent_b32": 0.5,
    }
    row.update(changes)
    return row


def test_targets_name_what_each_eligible_linearized_row_misses(
    index_benchmark: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    no_kernel = _target_row(algorithm="linearized x3")
    del no_kernel["speedup_kernel_adjacent_b1"], no_kernel["speedup_kernel_adjacent_b32"]
    rows = [
        _target_row(),  # meets every part
        _target_row(recall=0.9899, speedup_kernel_adjacent_b1=29.9, vs_flat_adjacent_b32=3.1),
        no_kernel,  # judged against the torch scan's interleaved ratios
        _target_row(corpus="synthetic"),  # random weights: not eligible
        _target_row(N=999_999),  # too small
        _target_row(algorithm="comb_topk"),  # not the linearized search
    ]
    verdicts = index_benchmark.target_verdicts(rows)
    assert len(verdicts) == 3
    assert verdicts[0]["misses"] == []
    assert verdicts[0]["exact"] == "fused kernel"
    assert verdicts[1]["misses"] == [
        "recall 0.9899 < 0.99",
        "29.9x < 30x less CPU at b1",
        "3.10x > 3x FAISS flat at b32",
    ]
    assert verdicts[2]["exact"] == "torch scan"
    assert (verdicts[2]["less_cpu_b1"], verdicts[2]["less_cpu_b32"]) == (80.0, 90.0)
    assert index_benchmark._report_targets(verdicts) == 0
    assert index_benchmark._report_targets(verdicts[1:2]) == 1
    assert index_benchmark._report_targets([]) == 1
    out = capsys.readouterr()
    assert "MET" in out.out
    assert "missed: recall 0.9899 < 0.99" in out.out
    assert "no row meets" in out.err


def test_record_sets_its_own_corpus_and_rows(index_benchmark: ModuleType, tmp_path: Path) -> None:
    for extra in (["--sizes", "1000"], ["--bundle", str(tmp_path)], ["--quick"], ["--linearized", "8,8,1"]):
        with pytest.raises(SystemExit) as exit_info:
            index_benchmark.main(["--record", str(tmp_path), *extra])
        assert exit_info.value.code == 2


def test_the_exact_kernels_full_mode_names_the_batch_that_misses_item_1(
    exact_kernels_benchmark: ModuleType,
) -> None:
    module = exact_kernels_benchmark

    def result(b1: float, b32: float) -> dict[str, Any]:
        rows = [
            {"shape": "8x4x64 H128", "batch": 1, "fused_gemm_fraction": b1},
            {"shape": "8x4x64 H128", "batch": 32, "fused_gemm_fraction": b32},
            {"shape": "4x3x32 H48", "batch": 1, "fused_gemm_fraction": 0.1},  # not a target shape
        ]
        return {"results": rows}

    assert module.target_misses(result(0.45, 0.60)) == []
    assert module.target_misses(result(0.449, 0.65)) == ["B = 1: 44.9% of the GEMM rate < 45%"]
    assert module.target_misses({"results": result(0.5, 0.7)["results"][1:]}) == ["B = 1: not measured"]
