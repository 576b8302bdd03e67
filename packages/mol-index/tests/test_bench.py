"""The index benchmark (benchmarks/bench_mol_index.py) and its corpus on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from mol_index.evaluation import peak_rss, synthetic_corpus


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
    guaranteed = [r for r in rows if "guarantee" in r["algorithm"]]
    assert len(guaranteed) == 1
    assert guaranteed[0]["recall"] == 1.0
    assert {r["stage"] for r in rows} == {"-", "torch"}
    stage_rows = [r for r in rows if r["stage"] == "torch"]
    assert all(r["build_peak_rss_mb"] > 0 and r["search_peak_rss_mb"] > 0 for r in stage_rows)
    assert rows[0]["search_peak_rss_mb"] > 0


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
    rows = {(r["algorithm"], r["k_prime"], r["k_prime_avg"]): r for r in result["results"][1:]}
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
