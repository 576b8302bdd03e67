"""The ``pq`` index: item component embeddings stored as product-quantization codes, searched by scoring
the decoded items with the similarity, then reranked with exact MoL.

Codes come from a :class:`~mol_index.layers.PQItemLayer` trained jointly with the model (Poeem;
:func:`encode_corpus` assigns every item to its nearest codes, no k-means over the corpus) or from the same
layer fitted after training by k-means on the corpus (:func:`fit_codes`, the post-hoc baseline).

Search (:func:`pq_search`) scans the corpus in blocks: each block's codes are decoded (coarse centroid +
one codeword per subspace, rotated back) and scored with the similarity's own scoring (gating features are
not quantized), a running top-``K'`` keeps the candidates, and the candidates are rescored exactly from the
unquantized item side. With ``K' = k`` the result is the quantized ranking itself, which is what Poeem's
recall measures. The scan decodes every item, so on the CPU it costs about as much as exact search: what
the codes buy is a compact candidate stage (``M`` bytes per component instead of ``4 d``).

Shapes: ``B`` queries, ``N`` items, ``Px`` item components of width ``d``, ``M`` subspaces, ``P`` gating
features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index._inputs import check_k
from mol_index.layers import PQItemLayer
from mol_index.search.exact import mask_excluded, merge_topk, sorted_topk
from mol_index.search.rails import SearchResult, _rerank

__all__ = ["PQCodes", "encode_corpus", "fit_codes", "pq_search"]

#: Query-item pairs decoded and scored per block of the candidate scan.
_BLOCK_PAIRS = 65536


@dataclass
class PQCodes:
    """The codes of a corpus and the layer that decodes them.

    Attributes:
        layer: the (warm) PQ layer: rotation, coarse centroids, codebooks.
        coarse: ``(N, Px)`` int64 coarse centroid of every item component.
        codes: ``(N, Px, M)`` int64 codeword of every subspace.
        source: ``joint`` (layer trained with the model) or ``kmeans`` (fitted after training).
    """

    layer: PQItemLayer
    coarse: torch.Tensor
    codes: torch.Tensor
    source: str

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def decode(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start, Px, d)`` reconstructed embeddings of rows ``start .. stop - 1``."""
        coarse = self.coarse[start:stop]  # (n, Px)
        codes = self.codes[start:stop]  # (n, Px, M)
        n, px, m = codes.shape
        with torch.no_grad():
            flat = self.layer.quantizer.decode(coarse.reshape(-1), codes.reshape(-1, m))  # (n * Px, d)
        return flat.view(n, px, -1)

    def bytes_per_item(self) -> float:
        """Code bytes per item: ``Px * (M * ceil(log2 K) / 8 + coarse id)``."""
        quantizer = self.layer.quantizer
        bits = max(1, (quantizer.codebook_size - 1).bit_length()) * quantizer.subspaces
        coarse_bits = (quantizer.centroids.shape[0] - 1).bit_length()
        return self.codes.shape[1] * (bits + coarse_bits) / 8

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store: the codes (compact integer types) and the layer's state as ``layer.*``."""
        small = torch.uint8 if self.layer.quantizer.codebook_size <= 256 else torch.int32
        tensors = {"coarse": self.coarse.to(torch.int32), "codes": self.codes.to(small)}
        for name, value in self.layer.state_dict().items():
            tensors[f"layer.{name}"] = value.detach().cpu()
        return {name: t.contiguous() for name, t in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], layer: PQItemLayer, source: str) -> PQCodes:
        """Inverse of :meth:`to_tensors`; ``layer`` is a new layer built from the stored options."""
        state = {k.removeprefix("layer."): v for k, v in tensors.items() if k.startswith("layer.")}
        layer.load_state_dict(state)
        return cls(layer.eval(), tensors["coarse"].long(), tensors["codes"].long(), source)

    def to(self, device: torch.device | str) -> PQCodes:
        return PQCodes(self.layer.to(device), self.coarse.to(device), self.codes.to(device), self.source)


def encode_corpus(layer: PQItemLayer, corpus: ItemSide, *, source: str = "joint") -> PQCodes:
    """Codes of every item with a trained layer: nearest centroid and codewords, no k-means.

    Raises:
        ConfigError: the layer was never warm-started.
        ShapeError: the corpus's component width is not the layer's.
    """
    if not bool(layer.warmed):
        raise ConfigError("the PQ layer was never warm-started; train it (or use fit_codes) first")
    embeddings = corpus.embeddings
    if embeddings.dim() != 3 or embeddings.shape[-1] != layer.quantizer.dim:
        raise ShapeError(
            f"corpus embeddings must be (N, Px, d={layer.quantizer.dim}); got {tuple(embeddings.shape)}"
        )
    n, px, d = embeddings.shape
    coarse, codes = [], []
    for start in range(0, n, 16384):
        c, m = layer.quantizer.encode(embeddings[start : start + 16384].reshape(-1, d).float())
        coarse.append(c.view(-1, px))
        codes.append(m.view(-1, px, m.shape[-1]))
    return PQCodes(layer.eval(), torch.cat(coarse), torch.cat(codes), source)


def fit_codes(
    corpus: ItemSide,
    *,
    coarse: int = 1,
    subspaces: int = 8,
    codebook_size: int = 256,
    iterations: int = 20,
    seed: int = 0,
) -> PQCodes:
    """Post-hoc PQ of a corpus: k-means on its component embeddings (no rotation), then the codes.

    Raises:
        ConfigError: too few component embeddings for the coarse centroids or the codebook size, or a width
            the subspaces do not divide.
    """
    layer = PQItemLayer(
        corpus.embeddings.shape[-1],
        coarse=coarse,
        subspaces=subspaces,
        codebook_size=codebook_size,
        rotation=False,
    )
    layer.warm_start(corpus, iterations=iterations, seed=seed)
    return encode_corpus(layer, corpus, source="kmeans")


def pq_search(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    codes: PQCodes,
    k: int,
    *,
    k_prime: int | None = None,
    excluded: torch.Tensor | None = None,
    rerank: bool = True,
) -> SearchResult:
    """Top-k rows: the top ``K'`` by the similarity on decoded items, reranked exactly (or not).

    Args:
        similarity: the index's similarity (eval mode).
        query: ``B`` queries.
        corpus: the unquantized ``(N, Px, d)`` item side, for the rerank (and its gating for the scan).
        codes: the corpus's codes.
        k: results per query.
        k_prime: candidates kept from the quantized scan (default and minimum ``k``; at most ``N``).
        excluded: ``(B, L)`` corpus rows to leave out per query (``-1`` padding), or ``None``.
        rerank: rerank the ``K'`` candidates by the unquantized items. ``False`` returns the top ``k`` of
            the decoded items with their decoded scores (``K'`` is then unused): the ranking a model trained
            through its PQ layer (Poeem) was trained and evaluated on.

    Returns:
        A :class:`SearchResult` with corpus rows as ids; ``exact`` is True only when ``K' = N`` and the
        candidates are reranked.
    """
    num_items = corpus.num_items
    check_k(k, num_items)
    if codes.num_items != num_items:
        raise ShapeError(f"the codes cover {codes.num_items} items but the corpus has {num_items}")
    width = min(num_items, max(k, k_prime or k)) if rerank else k
    batch = query.batch_size
    device = query.embeddings.device
    block = max(64, _BLOCK_PAIRS // max(1, batch))
    running = (
        torch.full((batch, width), float("-inf"), device=device),  # (B, K')
        torch.full((batch, width), -1, dtype=torch.int64, device=device),  # (B, K')
    )
    with torch.no_grad():
        for start in range(0, num_items, block):
            stop = min(num_items, start + block)
            gating = None if corpus.gating is None else corpus.gating[start:stop]
            decoded = ItemSide(codes.decode(start, stop).to(corpus.embeddings.dtype), gating)  # (n, Px, d)
            scores = mask_excluded(similarity.score_pairs(query, decoded).float(), excluded, start)  # (B, n)
            rows = torch.arange(start, stop, device=device).unsqueeze(0).expand(batch, -1)  # (B, n)
            running = merge_topk(running, (scores, rows), width)
        scores = running[0]  # (B, K'): decoded scores
        if rerank:
            candidates = running[1].masked_fill(running[1] < 0, num_items)  # (B, K'), padding N
            scores = _rerank(similarity, query, corpus, candidates, excluded)  # (B, K')
    top_scores, top_rows = sorted_topk(scores, running[1], k)
    return SearchResult(
        scores=top_scores,
        ids=top_rows,
        exact=torch.full((batch,), rerank and width >= num_items, dtype=torch.bool, device=device),
        num_candidates=(running[1] >= 0).sum(dim=1),
        k_prime=torch.full((batch,), width, dtype=torch.int64, device=device),
    )
