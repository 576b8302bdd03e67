"""The benchmark's library part on a tiny corpus (the real runs live in benchmarks/)."""

from __future__ import annotations

import pytest

from mol_index.bench import main, run, synthetic_corpus


def test_synthetic_corpus_is_clustered_and_normalised() -> None:
    _, query, corpus = synthetic_corpus(1000, 4, pq=4, px=2, dim=16)
    assert corpus.embeddings.shape == (1000, 2, 16)
    assert query.embeddings.shape == (4, 4, 16)
    norms = corpus.embeddings.norm(dim=-1)
    assert float((norms - 1).abs().max()) < 1e-5
    # each query component is close to some item component (queries sit near clusters)
    best = (query.embeddings.reshape(-1, 16) @ corpus.embeddings.reshape(-1, 16).T).max(dim=1).values
    assert float(best.min()) > 0.7


def test_tiny_run_has_exact_rows_and_no_violations() -> None:
    result = run(sizes=[300], stages={300: ["torch"]}, k_primes=[8], batches_b32=1, queries_b1=1)
    rows = result["results"]
    assert result["violations"] == 0
    assert rows[0]["algorithm"] == "exact"
    guaranteed = [r for r in rows if "guarantee" in r["algorithm"]]
    assert len(guaranteed) == 1
    assert guaranteed[0]["recall"] == 1.0
    assert {r["stage"] for r in rows} == {"-", "torch"}


def test_bench_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--quick" in capsys.readouterr().out
