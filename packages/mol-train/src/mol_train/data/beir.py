"""Text retrieval data in BEIR's format (SciFact and the other BEIR sets), read from a local folder.

A BEIR folder holds ``corpus.jsonl`` (one ``{"_id", "title", "text"}`` object per line),
``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (a header line, then ``query-id``,
``corpus-id`` and an integer ``score`` per line, tab-separated). Ids are strings, as in BEIR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mol_train.data.errors import DataError, DataFormatError

__all__ = ["BeirDataset", "load_beir"]


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR data set.

    Attributes:
        doc_ids: the N corpus document ids, in file order.
        titles: N titles (``""`` where the file has none).
        texts: N document texts.
        query_ids: the Q queries of the split (those with judgments), in ``queries.jsonl`` order.
        queries: Q query texts.
        qrels: query id -> {document id: relevance grade}, for the split.
    """

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def documents(self, separator: str = " ") -> list[str]:
        """N strings ``title + separator + text`` (just the text where the title is empty), as BEIR's
        dense models encode a document."""
        return [f"{t}{separator}{x}" if t else x for t, x in zip(self.titles, self.texts, strict=True)]


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Reads a BEIR folder's corpus, the queries judged in ``split`` and their judgments.

    Args:
        folder: the folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        split: the qrels file to read, ``qrels/<split>.tsv`` (e.g. ``train``, ``test``).

    Raises:
        DataError: a missing file, a duplicate id, or judgments naming a query or document that the
            files do not have.
        DataFormatError: a malformed line (the message names the file and line).

    Example::

        data = load_beir("../shared/data/scifact", "test")
        len(data.doc_ids), len(data.query_ids)  # (5183, 300)
    """
    root = Path(folder)
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise DataError(
                f"{path} not found: a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/{split}.tsv"
            )
    corpus = _read_jsonl(root / "corpus.jsonl", ("_id", "text"))
    doc_ids = [str(row["_id"]) for row in corpus]
    _check_unique(doc_ids, root / "corpus.jsonl")
    all_queries = _read_jsonl(root / "queries.jsonl", ("_id", "text"))
    query_text = {str(row["_id"]): str(row["text"]) for row in all_queries}
    _check_unique([str(row["_id"]) for row in all_queries], root / "queries.jsonl")
    qrels = _read_qrels(qrels_path)
    unknown_queries = sorted(set(qrels) - set(query_text))
    known_docs = set(doc_ids)
    unknown_docs = sorted({doc for grades in qrels.values() for doc in grades} - known_docs)
    if unknown_queries or unknown_docs:
        raise DataError(
            f"{qrels_path} names {len(unknown_queries)} queries not in queries.jsonl "
            f"(e.g. {unknown_queries[:3]}) and {len(unknown_docs)} documents not in corpus.jsonl "
            f"(e.g. {unknown_docs[:3]})"
        )
    query_ids = [query for query in query_text if query in qrels]
    return BeirDataset(
        doc_ids=doc_ids,
        titles=[str(row.get("title") or "") for row in corpus],
        texts=[str(row["text"]) for row in corpus],
        query_ids=query_ids,
        queries=[query_text[query] for query in query_ids],
        qrels=qrels,
    )


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, object]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(path, number, f"not a JSON object ({err.msg})") from None
            if not isinstance(row, dict) or any(key not in row for key in required):
                raise DataFormatError(path, number, f"expected a JSON object with the keys {list(required)}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.rstrip("\n").split("\t")
            if number == 1 and fields[:2] == ["query-id", "corpus-id"]:
                continue  # the header
            if not line.strip():
                continue
            if len(fields) != 3:
                raise DataFormatError(path, number, "expected query-id, corpus-id and score, tab-separated")
            try:
                grade = int(fields[2])
            except ValueError:
                raise DataFormatError(path, number, f"score must be an integer; got {fields[2]!r}") from None
            qrels.setdefault(fields[0], {})[fields[1]] = grade
    if not qrels:
        raise DataError(f"{path} has no judgments")
    return qrels


def _check_unique(ids: list[str], path: Path) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DataError(f"{path}: the id {duplicate!r} occurs more than once")
