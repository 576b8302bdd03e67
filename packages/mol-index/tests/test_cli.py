"""The mol-index CLI: build from arrays, search, info, and exit codes on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from safetensors.torch import save_file

from mol_core.similarity import similarity_to_config
from mol_index import MolIndex, SearchParams
from mol_index.cli import main


@pytest.fixture
def arrays(mol_corpus: Callable[..., tuple], tmp_path: Path) -> tuple[Path, Path, Path, Path, tuple]:
    sim, query, corpus = mol_corpus(0, 200, 3)
    items = tmp_path / "items.safetensors"
    save_file(
        {
            "item_embeddings": corpus.embeddings.contiguous(),
            "item_gating": corpus.gating.contiguous(),
            "item_ids": torch.arange(200) + 500,
        },
        str(items),
    )
    config = tmp_path / "sim.json"
    config.write_text(json_format.MessageToJson(similarity_to_config(sim)))
    state = tmp_path / "sim.safetensors"
    save_file({k: v.contiguous() for k, v in sim.state_dict().items()}, str(state))
    queries = tmp_path / "queries.safetensors"
    save_file(
        {"query_embeddings": query.embeddings.contiguous(), "query_gating": query.gating.contiguous()},
        str(queries),
    )
    return items, config, state, queries, (sim, query, corpus)


def test_build_search_info(arrays: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items, config, state, queries, (sim, query, corpus) = arrays
    out = tmp_path / "ix"
    build = [
        "build",
        str(out),
        "--items",
        str(items),
        "--similarity-config",
        str(config),
        "--similarity-state",
        str(state),
        "--stage",
        "flat",
    ]
    assert main(build) == 0
    assert main(["info", str(out), "--verify"]) == 0
    assert '"kind": "faiss-flat"' in capsys.readouterr().out
    before = torch.get_num_threads()
    try:  # --threads sets torch's (and FAISS's) thread count; a negative one is a clear error
        assert main(["--threads", "1", "info", str(out)]) == 0
        assert torch.get_num_threads() == 1
        assert main(["--threads", "-2", "info", str(out)]) == 2
        assert "threads must be >= 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    exclude = tmp_path / "exclude.npy"
    np.save(exclude, np.array([[500, -1], [501, 502], [-1, -1]], dtype=np.int64))
    assert (
        main(
            [
                "search",
                str(out),
                "--queries",
                str(queries),
                "-k",
                "5",
                "--algorithm",
                "exact",
                "--exclude",
                str(exclude),
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = MolIndex.build(sim, torch.arange(200) + 500, corpus).search(
        query,
        5,
        exclude=[[500], [501, 502], []],
        params=SearchParams(algorithm="exact"),
    )[1]
    assert [line["ids"] for line in lines] == want.tolist()
    assert main(build) == 2  # the index exists: bad input, exit 2 as in every mol CLI
    assert "already exists" in capsys.readouterr().err


def test_build_from_npy_dot_product(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = tmp_path / "items.npy"
    np.save(vectors, np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    config = tmp_path / "dot.json"
    config.write_text(json.dumps({"dot_product": {"embedding_dim": 8, "temperature": 1.0}}))
    assert (
        main(
            [
                "build",
                str(tmp_path / "ix"),
                "--items",
                str(vectors),
                "--similarity-config",
                str(config),
                "--stage",
                "hnsw",
                "--approximate-mean",
            ]
        )
        == 0
    )
    assert MolIndex.load(tmp_path / "ix").parameters["mean_index"] == "hnsw"
    queries = tmp_path / "q.npy"
    np.save(queries, np.ones((2, 8), dtype=np.float32))
    assert main(["search", str(tmp_path / "ix"), "--queries", str(queries), "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # build line + 2 queries
    avg = ["search", str(tmp_path / "ix"), "--queries", str(queries), "-k", "3", "--algorithm", "topk_avg"]
    assert main([*avg, "--k-prime", "1"]) == 0
    found = [[i for i in json.loads(line)["ids"] if i >= 0] for line in capsys.readouterr().out.splitlines()]
    assert [len(ids) for ids in found] == [1, 1]  # -1 pads the rest
    assert main([*avg, "--k-prime", "1", "--k-prime-avg", "3"]) == 0
    found = [[i for i in json.loads(line)["ids"] if i >= 0] for line in capsys.readouterr().out.splitlines()]
    assert [len(ids) for ids in found] == [3, 3]
    np.save(queries, np.ones((2, 7), dtype=np.float32))
    assert main(["search", str(tmp_path / "ix"), "--queries", str(queries), "-k", "3"]) == 2
    assert "(B, 8)" in capsys.readouterr().err
    np.save(queries, np.ones((2, 8), dtype=np.float32))
    assert main(["search", str(tmp_path / "ix"), "--queries", str(queries), "-k", "51"]) == 2


def test_mol_without_state_is_refused(
    arrays: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, config, _, _, _ = arrays
    assert (
        main(["build", str(tmp_path / "ix"), "--items", str(items), "--similarity-config", str(config)]) == 2
    )
    assert "--similarity-state is required" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("build", "search", "info", "bench"):
        assert command in text


def test_a_bundle_given_as_an_index_is_named_as_such(tmp_path: Path) -> None:
    from mol_core.errors import ArtifactError
    from mol_index.artifact import read_artifact

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"format_version": 1, "query_encoder_file": "query_encoder.pt2"}')
    with pytest.raises(ArtifactError, match="is a model bundle, not an index: build an index from it"):
        read_artifact(bundle)


def test_build_creates_missing_parent_directories(arrays: tuple, tmp_path: Path) -> None:
    items, config, state, _, _ = arrays
    target = tmp_path / "indexes" / "deep" / "prod"
    build = ["build", str(target), "--items", str(items), "--similarity-config", str(config)]
    assert main([*build, "--similarity-state", str(state)]) == 0
    assert (target / "manifest.json").is_file()


def test_build_shards_then_search_and_info(
    arrays: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, config, state, queries, (sim, query, corpus) = arrays
    out = tmp_path / "set"
    arrays_in = ["--items", str(items), "--similarity-config", str(config), "--similarity-state", str(state)]
    assert main(["build", str(out), *arrays_in, "--kind", "exact", "--shards", "3"]) == 0
    assert "built 3 exact shards" in capsys.readouterr().out
    assert main(["info", str(out), "--verify"]) == 0
    assert '"num_shards": 3' in capsys.readouterr().out
    assert main(["search", str(out), "--queries", str(queries), "-k", "5", "--algorithm", "exact"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = MolIndex.build(sim, torch.arange(200) + 500, corpus).search(
        query, 5, params=SearchParams(algorithm="exact")
    )[1]
    assert [line["ids"] for line in lines] == want.tolist()
    assert main(["build", str(tmp_path / "pq"), *arrays_in, "--kind", "pq", "--shards", "2"]) == 2
    assert "cannot be sharded" in capsys.readouterr().err


def test_build_linearized_then_search_linearized(
    arrays: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, config, state, queries, (sim, query, corpus) = arrays
    out = tmp_path / "ix"
    inputs = ["--items", str(items), "--similarity-config", str(config), "--similarity-state", str(state)]
    assert main(["build", str(out), *inputs, "--stage", "flat", "--linearized"]) == 0
    assert (out / "faiss" / "concatenated.faiss").exists()
    capsys.readouterr()
    search = ["search", str(out), "--queries", str(queries), "-k", "5", "--algorithm", "linearized"]
    assert main([*search, "--k-prime", "20", "--k-prime-avg", "20", "--rounds", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = MolIndex.build(sim, torch.arange(200) + 500, corpus).search(
        query, 5, params=SearchParams(algorithm="linearized", k_prime=20, k_prime_avg=20, rounds=2)
    )[1]
    assert [line["ids"] for line in lines] == want.tolist()
    knobs = ["--k-prime", "20", "--k-prime-avg", "20", "--rounds", "2"]
    assert main([*search, *knobs, "--early-nprobe", "3"]) == 0
    early = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["ids"] for line in early] == want.tolist()  # a flat stage visits every item anyway
    assert main([*search, "--early-nprobe", "0"]) == 2
    assert "early_nprobe" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["build", str(plain), *inputs, "--stage", "flat"]) == 0
    assert (
        main(["search", str(plain), "--queries", str(queries), "-k", "5", "--algorithm", "linearized"]) == 2
    )
    assert "--linearized" in capsys.readouterr().err


def test_build_shards_linearized_gives_every_shard_its_concatenated_index(
    arrays: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, config, state, queries, (sim, query, corpus) = arrays
    out = tmp_path / "set"
    inputs = ["--items", str(items), "--similarity-config", str(config), "--similarity-state", str(state)]
    assert main(["build", str(out), *inputs, "--kind", "faiss-flat", "--linearized", "--shards", "2"]) == 0
    assert len(list(out.glob("*/faiss/concatenated.faiss"))) == 2
    capsys.readouterr()
    search = ["search", str(out), "--queries", str(queries), "-k", "5", "--algorithm", "linearized"]
    assert main([*search, "--k-prime", "200", "--k-prime-avg", "200", "--rounds", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = MolIndex.build(sim, torch.arange(200) + 500, corpus).search(
        query, 5, params=SearchParams(algorithm="exact")
    )[1]
    assert [line["ids"] for line in lines] == want.tolist()  # K' covers each shard: every item scored
