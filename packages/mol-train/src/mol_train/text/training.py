"""Fine-tuning a text retriever on BEIR-format judgments, and evaluating it over the whole corpus.

Training pairs are the (query, relevant passage) pairs of the judgments. Each step scores a batch of B
queries against ``B + R`` passages: the batch's own positives (in-batch negatives for the other rows)
and ``R`` passages drawn uniformly from the corpus, shared by the batch. A candidate that is relevant to
a row's query but is not that row's positive is masked out of the row's softmax (an accidental hit). The
loss is the softmax cross-entropy of each row's positive, plus ``mi_weight`` times the mutual-information
loss of the MoL gating weights (mol_core.losses).

Evaluation encodes every passage of the corpus, scores every judged query against all of them
(``Similarity.score_corpus``) and reports nDCG@10, Recall@10 / @100 and MRR@10 as BEIR defines them
(:func:`mol_core.metrics.relevance_metrics`).

Shape symbols: B queries per batch, R sampled passages, N corpus passages, Q judged queries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mol_core.errors import ConfigError
from mol_core.losses import mutual_information_loss
from mol_core.metrics import relevance_metrics
from mol_core.settings import check_settings, setting
from mol_core.similarity import ItemSide, MoLSimilarity
from mol_train.data.beir import BeirDataset
from mol_train.text.encoder import set_trainable
from mol_train.text.towers import TextRetriever

__all__ = ["TextTrainConfig", "encode_corpus", "evaluate_text", "fit_text", "training_pairs"]


@dataclass(frozen=True)
class TextTrainConfig:
    """How a text retriever is fine-tuned (every field checked when built).

    Attributes:
        trainable: which encoder weights train: ``none``, ``top:N`` (the last N layers) or ``all``.
        epochs: passes over the training pairs.
        batch_size: B, queries per step (>= 2: the other rows' positives are negatives).
        num_negatives: R, corpus passages drawn per step, shared by the batch (0 = in-batch only).
        learning_rate: AdamW learning rate of the head (and poolings).
        encoder_learning_rate: AdamW learning rate of the encoder weights that train.
        mi_weight: weight of the mutual-information loss of the MoL gating (0 = off; no effect on a dot head).
        max_steps: stop after this many steps (0 = no limit).
        seed: the pair order and the sampled passages.
    """

    trainable: str = setting("top:1", pattern=r"none|all|top:\d+", expected="none, all or top:N")
    epochs: int = setting(1, minimum=1)
    batch_size: int = setting(16, minimum=2)
    num_negatives: int = setting(16, minimum=0)
    learning_rate: float = setting(1e-3, above=0)
    encoder_learning_rate: float = setting(2e-5, above=0)
    mi_weight: float = setting(0.0, minimum=0)
    max_steps: int = setting(0, minimum=0)
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings(self, prefix="text")


def training_pairs(data: BeirDataset) -> list[tuple[int, int]]:
    """``(query index, passage index)`` of every judged pair with a grade > 0, in file order."""
    query_index = {query: i for i, query in enumerate(data.query_ids)}
    doc_index = {doc: i for i, doc in enumerate(data.doc_ids)}
    return [
        (query_index[query], doc_index[doc])
        for query, grades in data.qrels.items()
        for doc, grade in grades.items()
        if grade > 0 and query in query_index
    ]


def fit_text(retriever: TextRetriever, data: BeirDataset, config: TextTrainConfig) -> list[float]:
    """Fine-tunes ``retriever`` on the judged pairs of ``data``; returns every step's loss.

    Raises:
        ConfigError: a bad ``config.trainable`` for this encoder, or nothing to train (a dot head with a
            frozen encoder).
    """
    torch.manual_seed(config.seed)
    encoder_trains = set_trainable(retriever.encoder, config.trainable) > 0
    encoder_params = [p for p in retriever.encoder.parameters() if p.requires_grad]
    head_params = [p for name, p in retriever.named_parameters() if not name.startswith("encoder.")]
    if not encoder_params and not any(p.requires_grad for p in head_params):
        raise ConfigError(
            "nothing to train: a dot head has no weights of its own, so its encoder must train "
            "(trainable top:N or all)"
        )
    groups = [{"params": head_params, "lr": config.learning_rate}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.encoder_learning_rate})
    optimizer = torch.optim.AdamW(groups)
    pairs = training_pairs(data)
    relevant: list[set[int]] = [set() for _ in data.query_ids]  # passages relevant to each query
    for query, doc in pairs:
        relevant[query].add(doc)
    documents = data.documents()
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    for epoch in range(config.epochs):
        retriever.train()
        retriever.encoder.train(encoder_trains)  # a frozen encoder runs without dropout
        order = list(pairs)
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        for start in range(0, len(order) - 1, config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                break
            sampled = torch.randint(len(documents), (config.num_negatives,), generator=generator).tolist()
            candidates = [doc for _, doc in batch] + sampled  # B positives, then R sampled
            queries = retriever.query_side([data.queries[q] for q, _ in batch])
            items = retriever.item_side([documents[doc] for doc in candidates])  # (B + R, Px, d)
            scores, weights = retriever.similarity.score_pairs_with_weights(queries, items)  # (B, B + R)
            hits = torch.tensor(
                [
                    [column != row and doc in relevant[q] for column, doc in enumerate(candidates)]
                    for row, (q, _) in enumerate(batch)
                ]
            )  # (B, B + R) relevant to the row's query, but not its positive
            logits = scores.masked_fill(hits, float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(len(batch)))
            if config.mi_weight > 0 and isinstance(retriever.similarity, MoLSimilarity):
                loss = loss + config.mi_weight * mutual_information_loss(weights)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
            if config.max_steps and len(losses) >= config.max_steps:
                return losses
    return losses


@torch.inference_mode()
def encode_corpus(retriever: TextRetriever, passages: list[str], batch_size: int = 64) -> ItemSide:
    """The item side of every passage, ``(N, Px, d)``, ``batch_size`` passages at a time."""
    retriever.eval()
    parts = [retriever.item_side(passages[i : i + batch_size]) for i in range(0, len(passages), batch_size)]
    gating = None if parts[0].gating is None else torch.cat([p.gating for p in parts])  # type: ignore[misc]
    return ItemSide(torch.cat([p.embeddings for p in parts]), gating)


@torch.inference_mode()
def evaluate_text(
    retriever: TextRetriever,
    data: BeirDataset,
    *,
    corpus: ItemSide | None = None,
    batch_size: int = 64,
    depth: int = 100,
) -> dict[str, float]:
    """nDCG@10, Recall@10 / @100 and MRR@10 (and @100) of ``data``'s judged queries over its whole corpus.

    Args:
        retriever: the model.
        data: the corpus, queries and judgments.
        corpus: the corpus already encoded (:func:`encode_corpus`), else it is encoded here.
        batch_size: texts per encoder call.
        depth: documents ranked per query (the largest cut-off, at most N).
    """
    retriever.eval()
    items = corpus if corpus is not None else encode_corpus(retriever, data.documents(), batch_size)
    depth = min(depth, items.num_items)
    rankings: dict[str, list[str]] = {}
    for start in range(0, len(data.queries), batch_size):
        query = retriever.query_side(data.queries[start : start + batch_size])
        scores = retriever.similarity.score_corpus(query, items)  # (b, N)
        top = torch.topk(scores, depth, dim=1).indices.tolist()
        for offset, row in enumerate(top):
            rankings[data.query_ids[start + offset]] = [data.doc_ids[i] for i in row]
    cuts = sorted({k for k in (10, 100) if k <= depth} | {depth})
    return relevance_metrics(rankings, data.qrels, ks=cuts)
