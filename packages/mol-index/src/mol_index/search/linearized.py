"""Linearized MoL top-k: a linear proxy of the learned similarity fitted per query, searched as a MIPS.

For one query, the proxy ``sum_p w_p l_p(x) + sum_p v_p h_p(x)`` over the ``P`` component logits
``l_ab(x) = <f_a(q), g_b(x)> / tau`` and the ``P`` item gating features ``h_p(x)`` (the item's part of the
gate, where the similarity has one and the stage indexed it) is one inner product with the item's
linearized vector ``concat(g_1(x), ..., g_Px(x), h(x))``: ``<u, v(x)>`` with ``u_b = sum_a w_ab f_a(q) / tau``
followed by ``v``. The search

1. scores exactly the TopKAvg candidates: the ``k_prime_avg`` items by ``<mean_a f_a, mean_b g_b(x)>``
   from the stage's mean index;
2. fits ``w`` (and ``v``, and a constant) by least squares to the exact scores of the best quarter of the
   items scored so far (at least ``4`` times the unknowns), so the proxy follows the similarity where it
   ranks highest;
3. scores exactly the stage's top ``k_prime`` items by ``<u, v(x)>`` (its concatenated index) that were
   not scored yet, and goes back to 2, ``rounds`` times in all;
4. returns the top-k of every item scored (exclusions honoured; ties to the smaller row).

Nothing proves the result exact (``SearchResult.exact`` is False unless every item was scored); how close
it comes and at what cost is measured in docs/mol-index.md ("Linearized search").

Shape symbols: ``B`` queries, ``N`` items, ``Pq`` / ``Px`` components, ``P = Pq * Px``, ``d`` width.
"""

from __future__ import annotations

import torch

from mol_core.errors import ConfigError
from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_core.similarity.base import gather_rows
from mol_index._inputs import Exclude, check_k, exclusion_tensor
from mol_index.search.candidates import CandidateStage, StageParams
from mol_index.search.exact import topk_any_order
from mol_index.search.rails import SearchResult

__all__ = ["linearized_search"]

#: Query-item pairs scored per ``component_logits`` call (bounds the gathered ``(b, X, Px, d)`` items).
_SCORE_BLOCK_PAIRS = 16384


class _Scorer:
    """Exact scores and proxy features of per-query candidate rows, by the fused CPU kernel where it takes
    the inputs (its query side laid out once for every round), else by torch."""

    def __init__(self, similarity: Similarity, query: QuerySide, corpus: ItemSide, with_gating: bool) -> None:
        from mol_index.kernels import mol_cpu

        self._similarity = similarity
        self._query = query
        self._corpus = corpus
        self._with_gating = with_gating
        self._kernel = (
            mol_cpu.GatheredScorer(similarity, query, corpus)
            if isinstance(similarity, MoLSimilarity) and mol_cpu.usable(similarity, query, corpus)
            else None
        )

    def into(self, rows: torch.Tensor, features: torch.Tensor, scores: torch.Tensor) -> None:
        """Writes the proxy features ``(B, X, F)`` and exact scores ``(B, X)`` of ``(B, X)`` rows into the
        given views (``-1`` slots: score ``-inf``, features unspecified); the features are the component
        logits ``(B, X, P)``, followed by the item gating features when ``with_gating`` (``F = 2P``).
        ``rows`` is reordered in place first, each query's live rows to the front in their order, so that
        only the first ``max_b live_b`` columns are scored."""
        valid = rows >= 0
        live = int(valid.sum(dim=1).max()) if rows.numel() else 0
        if live < rows.shape[1]:
            order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # live rows first
            rows.copy_(rows.gather(1, order))
            valid = rows >= 0
            scores[:, live:] = float("-inf")
        if live == 0:
            return
        head_rows, head_valid = rows[:, :live], valid[:, :live]
        head_features, head_scores = features[:, :live], scores[:, :live]
        safe = head_rows.clamp_min(0)
        if self._kernel is not None:
            self._kernel.score_into(safe, head_scores, head_features)
        else:
            new_features, new_scores = self._torch_scores(safe)
            head_features.copy_(new_features)
            head_scores.copy_(new_scores)
        if not bool(head_valid.all()):
            head_scores.masked_fill_(~head_valid, float("-inf"))

    def _torch_scores(self, safe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        similarity, query, corpus = self._similarity, self._query, self._corpus
        batch, width = safe.shape
        chunk = max(16, _SCORE_BLOCK_PAIRS // max(1, batch))
        logits_parts, score_parts = [], []
        query_gating = None if query.gating is None else query.gating.unsqueeze(1)  # (B, 1, P)
        for start in range(0, width, chunk):
            idx = safe[:, start : start + chunk]  # (B, x)
            items = gather_rows(corpus.embeddings, idx)  # (B, x, Px, d)
            gating = None if corpus.gating is None else gather_rows(corpus.gating, idx)  # (B, x, P)
            logits = similarity.component_logits(query, ItemSide(items, gating))  # (B, x, P)
            features = (
                torch.cat([logits, gating], dim=2) if self._with_gating and gating is not None else logits
            )
            logits_parts.append(features.float())
            score_parts.append(similarity.mix_scores(logits, query_gating, gating).float())  # (B, x)
        return torch.cat(logits_parts, dim=1), torch.cat(score_parts, dim=1)


def _least_squares(design: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``(B, F)`` float32 least-squares slopes of ``(B, S)`` targets on ``(B, S, F)`` features, with an
    intercept, over the rows of 0/1 ``(B, S)`` ``weights`` (None: every row): the columns and targets are
    centred on their means, the normal equations formed in float32 and solved in float64 with a ridge of
    ``1e-9`` times the Gram's mean diagonal (so constant or repeated columns still give a finite answer)."""
    num_features = design.shape[2]
    augmented = torch.cat([design, target.unsqueeze(2)], dim=2)  # (B, S, F + 1): the target last
    if weights is None:
        centred = augmented - augmented.mean(dim=1, keepdim=True)
    else:
        mask = weights.unsqueeze(2)  # (B, S, 1)
        count = weights.sum(dim=1).clamp_min(1.0).view(-1, 1, 1)  # (B, 1, 1)
        centred = (augmented - (augmented * mask).sum(dim=1, keepdim=True) / count) * mask
    moments = (centred.transpose(1, 2) @ centred).double()  # (B, F + 1, F + 1)
    gram, rhs = moments[:, :num_features, :num_features], moments[:, :num_features, num_features:]
    diagonal = gram.diagonal(dim1=1, dim2=2)  # (B, F), a view: the ridge is added in place
    diagonal += 1e-9 * diagonal.mean(dim=1, keepdim=True).clamp_min(1e-12)
    solution: torch.Tensor = torch.linalg.solve(gram, rhs)  # (B, F, 1)
    return solution[:, :, 0].float()


def _fit_directions(
    similarity: Similarity, query: QuerySide, features: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """``(B, F)`` query vectors ``u`` of the least-squares proxy fitted to the best scored items, from their
    ``(B, X, P)`` or ``(B, X, 2P)`` features (:class:`_Scorer`)."""
    batch, width, num_features = features.shape
    num_p = similarity.num_query_components * similarity.num_item_components
    fewest, most = torch.aminmax(torch.isfinite(scores).sum(dim=1))  # live items per query
    fit = min(width, max(4 * (num_features + 1), int(most) // 4))
    top = scores.topk(fit, dim=1, sorted=False)  # (B, S): the best S in any order
    design = torch.stack([features[b].index_select(0, top.indices[b]) for b in range(batch)])  # (B, S, F)
    if int(fewest) >= fit:  # every query has S live items
        slopes = _least_squares(design, top.values, None)  # (B, F)
    else:
        finite = torch.isfinite(top.values)  # empty slots (fewer live items than S) do not count
        design = design.masked_fill(~finite.unsqueeze(2), 0.0)  # dead slots' features are unspecified
        slopes = _least_squares(design, top.values.masked_fill(~finite, 0.0), finite.to(design.dtype))
    coef = slopes[:, :num_p].view(batch, similarity.num_query_components, similarity.num_item_components)
    u = torch.bmm(coef.transpose(1, 2), query.embeddings.float()) / similarity.temperature  # (B, Px, d)
    return torch.cat([u.reshape(batch, -1), slopes[:, num_p:num_features]], dim=1)  # (B, F)


def _uses_gating(similarity: Similarity, corpus: ItemSide, stage: CandidateStage) -> bool:
    """Whether the proxy includes the item gating features: True when the stage's concatenated index is
    ``Px * d + P`` wide (and the corpus has them), False when it is ``Px * d`` wide.

    Raises:
        ConfigError: the stage has no concatenated index, or one of another width.
    """
    components = similarity.num_item_components * corpus.embeddings.shape[-1]
    num_p = similarity.num_query_components * similarity.num_item_components
    width = stage.linearized_width
    if width == components:
        return False
    if width == components + num_p and corpus.gating is not None and corpus.gating.shape[-1] == num_p:
        return True
    if width == 0:
        raise ConfigError(
            "the linearized search needs an index over the concatenated item components: build the "
            "index with linearized=True (mol-index build --linearized)"
        )
    raise ConfigError(
        f"the stage's concatenated index is {width} wide; expected Px * d = {components}"
        + ("" if corpus.gating is None else f" or Px * d + P = {components + num_p} (with the item gating)")
    )


def _drop_seen(new_rows: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` rows with those in the same query's ``seen`` ``(B, S)`` set to ``-1`` (``seen`` entries
    outside ``[0, N)`` never match a row), by a binary search of each query's sorted ``seen`` rows.
    ``new_rows`` holds rows in ``[0, N)`` or ``-1``."""
    if seen.shape[1] == 0:
        return new_rows
    ordered = seen.sort(dim=1).values  # (B, S); a -1 entry can only match a -1 row, which stays -1
    position = torch.searchsorted(ordered, new_rows).clamp_max_(seen.shape[1] - 1)  # (B, K)
    return new_rows.masked_fill(ordered.gather(1, position) == new_rows, -1)


def linearized_search(
    similarity: Similarity,
    query: QuerySide,
    corpus: ItemSide,
    k: int,
    stage: CandidateStage,
    *,
    k_prime: int,
    k_prime_avg: int,
    rounds: int,
    exclude: Exclude | None = None,
    stage_params: StageParams | None = None,
    early_nprobe: int | None = None,
) -> SearchResult:
    """Top-k corpus rows by the linearized search (module docstring).

    Args:
        similarity: the similarity to score with (``eval()`` mode).
        query: ``B`` queries, embeddings ``(B, Pq, d)``.
        corpus: ``N`` items, embeddings ``(N, Px, d)``; ``stage`` must have been built over the same items,
            with a concatenated index (:meth:`CandidateStage.concatenated`); the proxy uses the item gating
            features when that index includes them (``Px * d + P`` wide).
        k: results per query, ``1 <= k <= N``.
        stage: the candidate stage.
        k_prime: items taken from the concatenated-components index per round; clamped to ``N``.
        k_prime_avg: TopKAvg candidates scored first (the first fit's sample); clamped to ``N``.
        rounds: fit-and-search rounds, ``>= 1``.
        exclude: corpus rows to leave out per query, as for :func:`~mol_index.search.exact.exact_search`.
        stage_params: FAISS search knobs: ``nprobe`` for the concatenated index (None: the stage's default
            for it, :attr:`~mol_index.search.candidates.FaissStage.default_concatenated_nprobe`; the mean
            index's TopKAvg search visits its default ``nprobe`` lists), ``ef_search`` for both.
        early_nprobe: IVF lists the concatenated-index searches of every round but the last visit (their
            candidates only widen the next fit's sample); None: as the last round.

    Returns:
        A :class:`~mol_index.search.rails.SearchResult` with corpus rows; ``num_candidates`` counts the
        items scored exactly, ``k_prime`` is ``k_prime``.

    Raises:
        ConfigError: ``k``, ``k_prime``, ``k_prime_avg``, ``rounds`` or ``early_nprobe`` out of range; the
            stage has no concatenated index, or one of another width.
    """
    num_items = corpus.num_items
    check_k(k, num_items)
    settings = [("k_prime", k_prime), ("k_prime_avg", k_prime_avg), ("rounds", rounds)]
    for name, value in settings + ([] if early_nprobe is None else [("early_nprobe", early_nprobe)]):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    params = stage_params or StageParams()
    early_params = params
    if early_nprobe is not None:
        early_params = StageParams(nprobe=early_nprobe, ef_search=params.ef_search)
    device = query.embeddings.device
    batch = query.batch_size
    excluded = exclusion_tensor(exclude, batch)
    with_gating = _uses_gating(similarity, corpus, stage)
    first, per_round = min(k_prime_avg, num_items), min(k_prime, num_items)
    width = first + rounds * per_round  # every candidate slot of the search, filled round by round
    num_features = similarity.num_components * (2 if with_gating else 1)
    rows = torch.full((batch, width), -1, dtype=torch.int64, device=device)  # (B, W)
    features = torch.empty(batch, width, num_features, dtype=torch.float32, device=device)  # (B, W, F)
    scores = torch.empty(batch, width, dtype=torch.float32, device=device)  # (B, W)
    score = _Scorer(similarity, query, corpus, with_gating)
    seed_params = StageParams(ef_search=params.ef_search)  # the mean index at its own default nprobe
    _, found = stage.mean(query.embeddings.mean(dim=1), first, seed_params)  # (B, K'avg), -1 where fewer
    rows[:, :first] = found.to(device)
    score.into(rows[:, :first], features[:, :first], scores[:, :first])
    filled = first
    for round_index in range(rounds):
        directions = _fit_directions(similarity, query, features[:, :filled], scores[:, :filled])  # (B, F)
        round_params = params if round_index == rounds - 1 else early_params
        _, found = stage.concatenated(directions, per_round, round_params)  # (B, K')
        window = slice(filled, filled + per_round)
        rows[:, window] = _drop_seen(found.to(device), rows[:, :filled])
        score.into(rows[:, window], features[:, window], scores[:, window])
        filled += per_round
    num_candidates = (rows >= 0).sum(dim=1)
    if excluded is not None:
        kept = _drop_seen(rows, excluded.to(device))  # excluded rows become -1
        scores = scores.masked_fill(kept < 0, float("-inf"))
    rows = rows.masked_fill(torch.isneginf(scores), -1)
    top_scores, top_rows = topk_any_order(scores, rows, k)
    return SearchResult(
        scores=top_scores,
        ids=top_rows,
        exact=num_candidates >= num_items,
        num_candidates=num_candidates,
        k_prime=torch.full((batch,), k_prime, dtype=torch.int64, device=device),
    )
