"""Text model bundles: a tiny random BERT with a dot or MoL head, exported over a synthetic corpus and read
back with mol-core alone (the exported program and the ``tokenizers`` library, no ``transformers``).

The reference is the retriever itself, in process: the bundle's query side of a text must equal the
retriever's, its item tensors the corpus encoded by the retriever, and its tokenizer the ``transformers``
tokenizer's ids, cut at the same length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="text retrieval needs the text extra")
pytest.importorskip("tokenizers", reason="text bundles need the tokenizers package")

from tokenizers import processors

from mol_core.bundle import load_bundle
from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.manifest import BUNDLE_FORMAT_VERSION, MANIFEST_FILENAME, read_manifest
from mol_core.proto.mol.v1.manifest_pb2 import ModelBundleManifest
from mol_train.text import (
    TextRetriever,
    build_text_retriever,
    encode_corpus,
    export_text_bundle,
    load_text_encoder,
    synthetic_beir,
    synthetic_words,
    tiny_text_encoder,
)

TOPICS = 12
CORPUS = synthetic_beir(TOPICS, 2)
IDS = [1000 + 7 * row for row in range(TOPICS)]
#: Queries of several lengths, one longer than max_query_tokens (cut), and words outside the vocabulary.
QUERIES = [
    *CORPUS.queries[:4],
    " ".join(["the", "cells", "w3"] * 30),
    "w5 unknown-word claim",
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"), synthetic_words(TOPICS))


def _retriever(encoder_dir: Path, head: str) -> TextRetriever:
    torch.manual_seed(1)
    retriever = build_text_retriever(load_text_encoder(encoder_dir), head, poolings=2, max_query_tokens=16)
    if retriever.poolings is not None:  # move the poolings off their mean-pooling start
        torch.nn.init.normal_(retriever.poolings.attention.weight, std=0.5)
    return retriever.eval()


@pytest.mark.parametrize("head", ["dot", "mol"])
def test_the_bundle_encodes_texts_as_the_retriever_does(encoder_dir: Path, tmp_path: Path, head: str) -> None:
    retriever = _retriever(encoder_dir, head)
    path = export_text_bundle(retriever, CORPUS, tmp_path / "bundle", item_ids=IDS, model_name="tiny")
    bundle = load_bundle(path)
    assert bundle.query_input == "text"
    assert bundle.max_query_tokens == 16
    assert bundle.manifest.format_version == 2
    assert bundle.manifest.tokenizer_file == "tokenizer.json"
    assert bundle.item_ids == IDS

    expected_ids = retriever.text_encoder.tokenize(QUERIES, 16)["input_ids"]
    encodings = bundle.tokenizer.encode_batch(QUERIES)
    assert torch.tensor([e.ids for e in encodings]).tolist() == expected_ids.tolist()
    assert expected_ids.shape[1] == 16  # the long query was cut

    with torch.no_grad():
        want = retriever.query_side(QUERIES)
        items = encode_corpus(retriever, CORPUS.documents())
    got = bundle.encode_texts(QUERIES)
    torch.testing.assert_close(got.embeddings, want.embeddings, rtol=1e-5, atol=1e-6)
    if head == "mol":
        assert got.gating is not None
        assert want.gating is not None
        torch.testing.assert_close(got.gating, want.gating, rtol=1e-5, atol=1e-6)
    else:
        assert got.gating is None
    torch.testing.assert_close(bundle.items.embeddings, items.embeddings, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        want_scores = retriever.similarity.score_corpus(want, items)  # (B, N)
    torch.testing.assert_close(
        bundle.similarity.score_corpus(got, bundle.items), want_scores, rtol=1e-4, atol=1e-4
    )
    if head == "mol":  # the same in a process where transformers cannot be imported
        torch.save(got.embeddings, tmp_path / "want.pt")
        reader = (
            "import sys, torch\n"
            "sys.modules['transformers'] = None  # any import of it fails\n"
            "from mol_core.bundle import load_bundle\n"
            f"got = load_bundle({str(path)!r}).encode_texts({QUERIES!r})\n"
            f"torch.testing.assert_close(got.embeddings, torch.load({str(tmp_path / 'want.pt')!r}))\n"
            "assert 'transformers' not in sys.modules or sys.modules['transformers'] is None\n"
        )
        subprocess.run([sys.executable, "-c", reader], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_text_bundle_errors(encoder_dir: Path, tmp_path: Path) -> None:
    retriever = _retriever(encoder_dir, "mol")
    with pytest.raises(ConfigError, match="corpus ids are not all integers"):
        export_text_bundle(retriever, CORPUS, tmp_path / "a")  # ids d0, d1, ...
    with pytest.raises(ConfigError, match="not unique"):
        export_text_bundle(retriever, CORPUS, tmp_path / "a", item_ids=[1] * TOPICS)
    with pytest.raises(ConfigError, match="item_ids has 3 ids but the corpus 12 passages"):
        export_text_bundle(retriever, CORPUS, tmp_path / "a", item_ids=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"item ids must be in \[0, 2\*\*63\).*\[-1\]"):
        export_text_bundle(retriever, CORPUS, tmp_path / "a", item_ids=[-1, *IDS[1:]])
    assert not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []

    path = export_text_bundle(retriever, CORPUS, tmp_path / "b", item_ids=IDS)
    with pytest.raises(ArtifactError, match="already exists"):
        export_text_bundle(retriever, CORPUS, path, item_ids=IDS)
    bundle = load_bundle(path)
    with pytest.raises(ShapeError, match="text bundle"):
        bundle.encode([[IDS[0]]])
    with pytest.raises(ShapeError, match=r"text\(s\) \[1\] are empty or blank"):
        bundle.encode_texts(["w1", "  "])
    # a tokenizer that adds no special tokens gives a text of dropped characters no tokens at all
    bundle.tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    with pytest.raises(ShapeError, match=r"text\(s\) \[0\] give no tokens"):
        bundle.encode_texts(["\x00"])

    # a reader that knows only history bundles (format version 1) refuses the text bundle
    with pytest.raises(ArtifactError, match="format version 2 is not supported"):
        read_manifest(path / MANIFEST_FILENAME, ModelBundleManifest, BUNDLE_FORMAT_VERSION)
    # and this reader refuses a text bundle that claims the history format version
    manifest = json.loads((path / MANIFEST_FILENAME).read_text())
    (path / MANIFEST_FILENAME).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ArtifactError, match="query_input 'text' with format_version 1"):
        load_bundle(path)
    (path / MANIFEST_FILENAME).write_text(
        json.dumps({**manifest, "parameters": {**manifest["parameters"], "max_query_tokens": "x"}})
    )
    with pytest.raises(ArtifactError, match="needs a tokenizer_file and the parameters max_query_tokens"):
        load_bundle(path)
