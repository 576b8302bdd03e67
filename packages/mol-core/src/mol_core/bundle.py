"""Model bundles: what training hands to indexing and serving, loadable with torch alone.

A bundle is a directory::

    manifest.json               ModelBundleManifest (protos/mol/v1/manifest.proto), files with sha256
    query_encoder.pt2           torch.export program: (history, timestamps, next_timestamps, user_ids)
                                -> (query component embeddings (B, Pq, d), gating features (B, P))
    item_tensors.safetensors    item_embeddings (N, Px, d), item_gating (N, P) for MoL, the
                                similarity's parameters under "similarity.", and (bundles written
                                since 2026-12-04) item_representations (N, Dx), the item side's input
    item_vocabulary.json        the N external item ids; row i of the item tensors is item_vocabulary[i]

mol-train writes it (``mol-train export``); :func:`load_bundle` reads it without mol-train or torchrec.
The query encoder takes right-aligned ``(B, L)`` internal item ids with ``L = max_len`` (row ``i`` of the
item tensors is internal id ``i + 1``; 0 is padding); :meth:`ModelBundle.encode` builds those tensors
from external ids.

A *text* bundle (``query_input = "text"``, format version 2, written by
``mol_train.text.export_text_bundle``) holds a passage corpus instead: its query encoder takes
``(input_ids, attention_mask)`` ``(B, T)`` and returns the same two tensors, ``tokenizer.json`` (the
``tokenizers`` library's format) makes those from query texts, and :meth:`ModelBundle.encode_texts` runs
both. Reading one needs the ``tokenizers`` package (``mol-core[text]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mol_core.errors import ArtifactError, ShapeError
from mol_core.manifest import (
    BUNDLE_FORMAT_VERSION,
    MANIFEST_FILENAME,
    TEXT_BUNDLE_FORMAT_VERSION,
    read_manifest,
    verify_files,
)
from mol_core.proto.mol.v1.manifest_pb2 import ModelBundleManifest
from mol_core.similarity import ItemSide, QuerySide, Similarity, similarity_from_config

__all__ = [
    "ITEM_TENSORS_FILE",
    "ITEM_VOCABULARY_FILE",
    "QUERY_ENCODER_FILE",
    "QUERY_INPUTS",
    "TOKENIZER_FILE",
    "ModelBundle",
    "load_bundle",
]

QUERY_ENCODER_FILE = "query_encoder.pt2"
ITEM_TENSORS_FILE = "item_tensors.safetensors"
ITEM_VOCABULARY_FILE = "item_vocabulary.json"
TOKENIZER_FILE = "tokenizer.json"
#: What a bundle's query encoder takes (``ModelBundleManifest.query_input``; empty means "history").
QUERY_INPUTS = ("history", "text")


@dataclass(frozen=True)
class ModelBundle:
    """A loaded model bundle.

    Attributes:
        manifest: the bundle's manifest.
        similarity: the similarity module with its trained parameters, in eval mode.
        items: ``(N, Px, d)`` item side of every item (row i = ``item_ids[i]``).
        item_ids: the N external item ids (ints or strings).
        max_len: L, the history width the query encoder takes (history bundles; 0 for text).
        query_encoder: the exported program's module (call through :meth:`encode` or
            :meth:`encode_texts`).
        query_input: ``"history"`` or ``"text"`` (:data:`QUERY_INPUTS`).
        tokenizer: a text bundle's ``tokenizers.Tokenizer`` (truncating at ``max_query_tokens``, padding
            to the longest text), ``None`` for history bundles.
        max_query_tokens: a text bundle's query length cut, in tokens (0 for history bundles).
        item_representations: ``(N, Dx)`` the representations ``items`` were computed from
            (``similarity.item_side(item_representations)``), or ``None`` (bundles written before they
            were stored, and text bundles).
    """

    manifest: ModelBundleManifest
    similarity: Similarity
    items: ItemSide
    item_ids: list[Any]
    max_len: int
    query_encoder: torch.nn.Module
    query_input: str = "history"
    tokenizer: Any = None
    max_query_tokens: int = 0
    item_representations: torch.Tensor | None = None

    def item_rows(self, external_ids: list[Any]) -> list[int]:
        """External item ids -> rows of the item tensors (internal id minus 1).

        Raises:
            ShapeError: an id is not in the bundle's vocabulary.
        """
        index = self._index()
        missing = [i for i in external_ids if i not in index]
        if missing:
            raise ShapeError(
                f"{len(missing)} item id(s) are not in the bundle's vocabulary, e.g. {missing[:5]}"
            )
        return [index[i] for i in external_ids]

    def _index(self) -> dict[Any, int]:
        cached: dict[Any, int] | None = self.__dict__.get("_row_index")
        if cached is None:
            cached = {item: row for row, item in enumerate(self.item_ids)}
            object.__setattr__(self, "_row_index", cached)
        return cached

    @torch.no_grad()
    def encode(
        self,
        histories: list[list[Any]],
        *,
        timestamps: list[list[int]] | None = None,
        user_ids: list[int] | None = None,
        query_times: list[int] | None = None,
    ) -> QuerySide:
        """Runs the exported query encoder on B histories of external item ids (oldest first).

        Args:
            histories: B lists of external item ids; the most recent ``max_len`` are used.
            timestamps: B lists of item times aligned with ``histories``, or ``None``.
            user_ids: B user ids (for user-id components), or ``None`` (zeros).
            query_times: B times the queries are about, or ``None`` (each history's last time).

        Returns:
            The query side: embeddings ``(B, Pq, d)``, gating ``(B, P)`` or ``None``.

        Raises:
            ShapeError: an empty history, an unknown item id, timestamps that do not align, or a text
                bundle (use :meth:`encode_texts`).
        """
        if self.query_input != "history":
            raise ShapeError("this is a text bundle: its queries are texts (encode_texts), not histories")
        batch, width = len(histories), self.max_len
        if batch == 0:
            raise ShapeError("encode needs at least one history")
        history = torch.zeros(batch, width, dtype=torch.long)
        times = torch.zeros(batch, width, dtype=torch.long)
        for b, items in enumerate(histories):
            if not items:
                raise ShapeError(f"history {b} is empty; a query needs at least one item")
            rows = self.item_rows(list(items)[-width:])
            history[b, width - len(rows) :] = torch.tensor(rows, dtype=torch.long) + 1
            if timestamps is not None:
                if len(timestamps[b]) != len(items):
                    raise ShapeError(
                        f"history {b} has {len(items)} items but {len(timestamps[b])} timestamps"
                    )
                row_times = list(timestamps[b])[-width:]
                times[b, width - len(row_times) :] = torch.tensor(row_times, dtype=torch.long)
        if query_times is None:
            next_times = times[:, -1].clone()  # (B,)
        else:
            next_times = torch.tensor(query_times, dtype=torch.long)
        users = torch.tensor(user_ids or [0] * batch, dtype=torch.long)  # (B,)
        embeddings, gating = self.query_encoder(history, times, next_times, users)
        return QuerySide(embeddings, gating if gating.shape[-1] > 0 else None)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> QuerySide:
        """Tokenises B query texts (cut at ``max_query_tokens``) and runs a text bundle's query tower.

        Returns:
            The query side: embeddings ``(B, Pq, d)``, gating ``(B, P)`` or ``None``.

        Raises:
            ShapeError: no texts, an empty or blank text, a text that gives no tokens, or a history bundle
                (use :meth:`encode`).
        """
        if self.query_input != "text" or self.tokenizer is None:
            raise ShapeError("this bundle encodes item histories (encode), not texts")
        if not texts:
            raise ShapeError("encode_texts needs at least one text")
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            raise ShapeError(f"text(s) {blank[:5]} are empty or blank; a text query needs words")
        encodings = self.tokenizer.encode_batch(list(texts))
        empty = [i for i, e in enumerate(encodings) if sum(e.attention_mask) == 0]
        if empty:  # only characters the tokenizer drops (e.g. zero-width), and no special tokens to add
            raise ShapeError(f"text(s) {empty[:5]} give no tokens; a text query needs words")
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, T)
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # (B, T)
        embeddings, gating = self.query_encoder(input_ids, attention_mask)
        return QuerySide(embeddings, gating if gating.shape[-1] > 0 else None)


def load_bundle(path: str | Path) -> ModelBundle:
    """Loads and verifies a model bundle directory.

    Raises:
        ArtifactError: a missing or corrupt file (checksums are verified), another format version, or
            tensors that do not fit the manifest's similarity.
    """
    from safetensors.torch import load_file

    root = Path(path)
    manifest = read_manifest(
        root / MANIFEST_FILENAME, ModelBundleManifest, (BUNDLE_FORMAT_VERSION, TEXT_BUNDLE_FORMAT_VERSION)
    )
    query_input = manifest.query_input or "history"
    expected_version = TEXT_BUNDLE_FORMAT_VERSION if query_input == "text" else BUNDLE_FORMAT_VERSION
    if query_input not in QUERY_INPUTS or manifest.format_version != expected_version:
        raise ArtifactError(
            f"{root}: query_input {manifest.query_input!r} with format_version {manifest.format_version}; "
            f"expected 'history' with {BUNDLE_FORMAT_VERSION} or 'text' with {TEXT_BUNDLE_FORMAT_VERSION}"
        )
    verify_files(manifest, root)
    parameters = dict(manifest.parameters)
    temperature = float(parameters["temperature"]) if "temperature" in parameters else None
    similarity = similarity_from_config(manifest.similarity, temperature)
    tensors = load_file(str(root / manifest.item_tensors_file))
    state = {k.removeprefix("similarity."): v for k, v in tensors.items() if k.startswith("similarity.")}
    try:
        similarity.load_state_dict(state)
    except RuntimeError as err:
        raise ArtifactError(
            f"{root}: the similarity parameters do not fit the manifest's config: {err}"
        ) from err
    similarity.eval()
    items = ItemSide(tensors["item_embeddings"], tensors.get("item_gating"))
    representations = tensors.get("item_representations")
    if representations is not None and (
        representations.dim() != 2 or representations.shape[0] != items.embeddings.shape[0]
    ):
        raise ArtifactError(
            f"{root}: item_representations must have shape (N={items.embeddings.shape[0]}, Dx); "
            f"got {tuple(representations.shape)}"
        )
    vocabulary = json.loads((root / ITEM_VOCABULARY_FILE).read_text())
    if len(vocabulary) != manifest.num_items or items.embeddings.shape[0] != manifest.num_items:
        raise ArtifactError(
            f"{root}: the manifest says {manifest.num_items} items but the vocabulary has {len(vocabulary)} "
            f"and the item tensors {items.embeddings.shape[0]}"
        )
    try:
        program = torch.export.load(str(root / manifest.query_encoder_file))
    except Exception as err:
        raise ArtifactError(f"{root}: cannot load the exported query encoder: {err}") from err
    tokenizer, max_query_tokens = None, 0
    if query_input == "text":
        tokenizer, max_query_tokens = _text_tokenizer(root, manifest)
    return ModelBundle(
        manifest=manifest,
        similarity=similarity,
        items=items,
        item_ids=vocabulary,
        max_len=int(parameters.get("max_len", "0")),
        query_encoder=program.module(),
        query_input=query_input,
        tokenizer=tokenizer,
        max_query_tokens=max_query_tokens,
        item_representations=representations,
    )


def _text_tokenizer(root: Path, manifest: ModelBundleManifest) -> tuple[Any, int]:
    """A text bundle's tokenizer, set to cut at ``max_query_tokens`` and pad to the longest text."""
    parameters = dict(manifest.parameters)
    try:
        max_tokens = int(parameters.get("max_query_tokens", ""))
        pad_id = int(parameters.get("pad_token_id", ""))
    except ValueError:
        max_tokens = pad_id = -1
    if max_tokens < 2 or pad_id < 0 or not manifest.tokenizer_file:
        raise ArtifactError(
            f"{root}: a text bundle needs a tokenizer_file and the parameters max_query_tokens (>= 2) and "
            f"pad_token_id (>= 0); got {manifest.tokenizer_file!r}, {parameters.get('max_query_tokens')!r}, "
            f"{parameters.get('pad_token_id')!r}"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ArtifactError(
            f"{root} is a text bundle; reading it needs the tokenizers package: pip install 'mol-core[text]'"
        ) from err
    try:
        tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer_file))
    except Exception as err:  # the Rust library raises plain Exception subclasses
        raise ArtifactError(f"{root}: cannot read the tokenizer {manifest.tokenizer_file}: {err}") from err
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=parameters.get("pad_token", "[PAD]"))
    return tokenizer, max_tokens
