"""The BEIR loader: a hand-written folder, malformed files, and the real SciFact (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mol_train.data import BeirDataset, DataError, DataFormatError, load_beir

SCIFACT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "scifact"


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: str, split: str = "test") -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


CORPUS = [
    {"_id": "10", "title": "Alpha", "text": "first abstract"},
    {"_id": "11", "title": "", "text": "second abstract"},
    {"_id": "12", "text": "third, no title key"},
]
QUERIES = [
    {"_id": "2", "text": "claim two"},
    {"_id": "1", "text": "claim one"},
    {"_id": "3", "text": "no qrels"},
]

HEADER = "query-id\tcorpus-id\tscore\n"


def test_reads_a_split_in_file_order(tmp_path: Path) -> None:
    root = write_beir(tmp_path, CORPUS, QUERIES, HEADER + "1\t10\t1\n2\t12\t2\n2\t11\t0\n")
    data = load_beir(root, "test")
    assert isinstance(data, BeirDataset)
    assert data.doc_ids == ["10", "11", "12"]
    assert data.titles == ["Alpha", "", ""]
    assert data.documents() == ["Alpha first abstract", "second abstract", "third, no title key"]
    assert data.query_ids == ["2", "1"]  # queries.jsonl order, only the judged ones
    assert data.queries == ["claim two", "claim one"]
    assert data.qrels == {"1": {"10": 1}, "2": {"12": 2, "11": 0}}


@pytest.mark.parametrize(
    ("qrels", "error", "message"),
    [
        (HEADER + "1\t10\n", DataFormatError, r"test.tsv, line 2: expected query-id"),
        (
            HEADER + "1\t10\thigh\n",
            DataFormatError,
            "score must be an integer; got 'high'",
        ),
        (
            HEADER + "9\t10\t1\n",
            DataError,
            r"1 queries not in queries.jsonl \(e.g. \['9'\]\)",
        ),
        (
            HEADER + "1\t99\t1\n",
            DataError,
            r"1 documents not in corpus.jsonl \(e.g. \['99'\]\)",
        ),
        (HEADER, DataError, "has no judgments"),
    ],
)
def test_bad_qrels_are_refused(tmp_path: Path, qrels: str, error: type[Exception], message: str) -> None:
    root = write_beir(tmp_path, CORPUS, QUERIES, qrels)
    with pytest.raises(error, match=message):
        load_beir(root)


def test_bad_corpus_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"qrels/dev.tsv"):
        load_beir(write_beir(tmp_path / "a", CORPUS, QUERIES, "1\t10\t1\n"), "dev")
    root = write_beir(tmp_path / "b", [*CORPUS, {"_id": "10", "text": "again"}], QUERIES, "1\t10\t1\n")
    with pytest.raises(DataError, match="the id '10' occurs more than once"):
        load_beir(root)
    root = write_beir(tmp_path / "c", CORPUS, QUERIES, "1\t10\t1\n")
    (root / "corpus.jsonl").write_text('{"_id": "10", "text": "ok"}\n{"_id": "11"}\nnot json\n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl, line 2: expected a JSON object with the keys"):
        load_beir(root)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="../shared/data/scifact is not present")
def test_scifact_counts_match_beir() -> None:
    test, train = load_beir(SCIFACT, "test"), load_beir(SCIFACT, "train")
    assert len(test.doc_ids) == 5_183
    assert (len(test.query_ids), sum(len(g) for g in test.qrels.values())) == (300, 339)
    assert (len(train.query_ids), sum(len(g) for g in train.qrels.values())) == (809, 919)
