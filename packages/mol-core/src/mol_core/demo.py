"""mol-core demo: Mixture-of-Logits against a dot product on a task with planted multi-interest structure.

    mol-core-demo                # under a minute on 2 CPU cores
    mol-core-demo --steps 100    # shorter

The data: every query and every item carries ``m`` hidden "interest" vectors; a query's relevance to an
item is the *largest* inner product between any of its interests and any of the item's. That is not a
bilinear function of the features, so no dot product of linear towers can express it, while MoL can (a
component per interest, and gating that favours the largest logit). Each query picks its positive item
from a softmax over that relevance. Both models see the concatenated interest
vectors as features and are trained the same way (sampled softmax with uniform negatives, plus the MI
load-balancing loss for MoL), with the same embedding width per side (``Pq * d = Px * d = width``). Both
are then evaluated over the full item corpus on held-out queries with HR@K, NDCG@K and MRR; a last row
ranks by the true relevance, the best any model can do on these sampled targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from mol_core.losses import mutual_information_loss, sample_uniform_negatives, sampled_softmax_loss
from mol_core.metrics import RankingMetrics
from mol_core.similarity import DotProductSimilarity, MoLSimilarity, Similarity


@dataclass(frozen=True)
class PlantedTask:
    """Queries and items with ``m`` hidden interests of dimension ``k`` each.

    Attributes:
        query_features: ``(Q, m * k)`` the concatenated interests of each query.
        item_features: ``(N, m * k)`` the concatenated interests of each item.
        targets: ``(Q,)`` the positive item of each query.
    """

    query_features: torch.Tensor
    item_features: torch.Tensor
    targets: torch.Tensor


def true_relevance(query_features: torch.Tensor, item_features: torch.Tensor, interests: int) -> torch.Tensor:
    """``(b, m * k), (N, m * k) -> (b, N)``: the planted ``max_{a,b} <v_a(q), u_b(x)>``."""
    q = query_features.view(query_features.shape[0], interests, -1)  # (b, m, k)
    x = item_features.view(item_features.shape[0], interests, -1)  # (N, m, k)
    return torch.einsum("qak,nbk->qnab", q, x).flatten(2).amax(-1)  # (b, N)


def make_planted_task(
    num_queries: int,
    num_items: int,
    *,
    interests: int = 2,
    dim: int = 16,
    sharpness: float = 40.0,
    seed: int = 0,
) -> PlantedTask:
    """Draws a task whose true similarity is :func:`true_relevance` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    queries = nn.functional.normalize(
        torch.randn(num_queries, interests, dim, generator=gen), dim=-1
    ).flatten(1)
    items = nn.functional.normalize(torch.randn(num_items, interests, dim, generator=gen), dim=-1).flatten(1)
    targets = torch.empty(num_queries, dtype=torch.long)
    for start in range(0, num_queries, 1024):
        relevance = true_relevance(queries[start : start + 1024], items, interests)  # (b, N)
        probs = torch.softmax(sharpness * relevance, dim=-1)
        targets[start : start + 1024] = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return PlantedTask(queries, items, targets)


class TwoTower(nn.Module):
    """Linear query and item towers in front of a similarity (identity for MoL, whose heads project)."""

    def __init__(self, similarity: Similarity, feature_dim: int, tower_dim: int | None) -> None:
        super().__init__()
        self.similarity = similarity
        self.query_tower: nn.Module = nn.Linear(feature_dim, tower_dim) if tower_dim else nn.Identity()
        self.item_tower: nn.Module = nn.Linear(feature_dim, tower_dim) if tower_dim else nn.Identity()


def train(
    model: TwoTower,
    task: PlantedTask,
    *,
    steps: int,
    batch_size: int,
    num_negatives: int,
    lr: float,
    seed: int,
) -> float:
    """Trains with AdamW on sampled softmax (+ 0.001 MI loss for MoL); returns the final loss."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    num_items = task.item_features.shape[0]
    uses_gating = isinstance(model.similarity, MoLSimilarity)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        rows = torch.randint(0, task.query_features.shape[0], (batch_size,), generator=gen)
        positives = task.targets[rows]  # (M,)
        negatives = sample_uniform_negatives(batch_size, num_negatives, num_items, generator=gen)  # (M, R)
        sim = model.similarity
        query = sim.query_side(model.query_tower(task.query_features[rows]))
        pos_items = sim.item_side(model.item_tower(task.item_features[positives]).unsqueeze(1))  # (M, 1, ...)
        pos_scores, weights = sim.score_pairs_with_weights(query, pos_items)  # (M, 1), (M, 1, P)
        neg_scores = sim.score_pairs(query, sim.item_side(model.item_tower(task.item_features[negatives])))
        loss = sampled_softmax_loss(
            pos_scores[:, 0], neg_scores, positive_ids=positives, negative_ids=negatives
        )
        if uses_gating:
            loss = loss + 0.001 * mutual_information_loss(weights)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: TwoTower, task: PlantedTask) -> dict[str, float]:
    """Full-corpus HR@K / NDCG@K / MRR of the held-out queries."""
    model.eval()
    sim = model.similarity
    corpus = sim.item_side(model.item_tower(task.item_features))  # precomputed once, as in a bundle
    metrics = RankingMetrics(ks=(1, 10, 50))
    for start in range(0, task.query_features.shape[0], 256):
        query = sim.query_side(model.query_tower(task.query_features[start : start + 256]))
        metrics.update(sim.score_corpus(query, corpus), task.targets[start : start + 256])
    return metrics.compute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000, help="corpus size N (default 2000)")
    parser.add_argument("--queries", type=int, default=40_000, help="training queries (default 40000)")
    parser.add_argument("--test-queries", type=int, default=2000, help="held-out queries (default 2000)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per model (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256, help="queries per step (default 256)")
    parser.add_argument(
        "--negatives", type=int, default=128, help="uniform negatives per query (default 128)"
    )
    parser.add_argument("--components", type=int, default=2, help="Pq = Px for MoL (default 2)")
    parser.add_argument("--component-dim", type=int, default=16, help="d for MoL (default 16)")
    parser.add_argument(
        "--interests", type=int, default=2, help="hidden interests per query and item (default 2)"
    )
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and sampling")
    args = parser.parse_args(argv)
    if (
        min(
            args.items,
            args.queries,
            args.test_queries,
            args.steps,
            args.batch_size,
            args.negatives,
            args.interests,
        )
        < 1
    ):
        parser.error("every count must be >= 1")

    torch.manual_seed(args.seed)
    task = make_planted_task(
        args.queries + args.test_queries, args.items, interests=args.interests, seed=args.seed
    )
    train_task = PlantedTask(
        task.query_features[: args.queries], task.item_features, task.targets[: args.queries]
    )
    test_task = PlantedTask(
        task.query_features[args.queries :], task.item_features, task.targets[args.queries :]
    )
    features = task.query_features.shape[1]
    width = args.components * args.component_dim
    models = {
        f"dot product (width {width})": TwoTower(DotProductSimilarity(width), features, width),
        f"MoL {args.components}x{args.components}x{args.component_dim}": TwoTower(
            MoLSimilarity(
                query_input_dim=features,
                item_input_dim=features,
                query_components=args.components,
                item_components=args.components,
                component_dim=args.component_dim,
            ),
            features,
            None,
        ),
    }
    print(
        f"planted multi-interest task: {args.items} items, "
        f"{args.queries} training / {args.test_queries} test queries"
    )
    rows = []
    for name, model in models.items():
        start = time.perf_counter()
        loss = train(
            model,
            train_task,
            steps=args.steps,
            batch_size=args.batch_size,
            num_negatives=args.negatives,
            lr=args.lr,
            seed=args.seed,
        )
        result = evaluate(model, test_task)
        rows.append((name, loss, result, time.perf_counter() - start))
        print(f"  trained {name}: final loss {loss:.3f} in {rows[-1][3]:.1f}s", flush=True)
    oracle = RankingMetrics(ks=(1, 10, 50))
    oracle.update(
        true_relevance(test_task.query_features, task.item_features, args.interests), test_task.targets
    )
    rows.append(("oracle (true relevance)", 0.0, oracle.compute(), 0.0))
    print(f"\n{'model':<24} {'HR@1':>7} {'HR@10':>7} {'NDCG@10':>8} {'HR@50':>7} {'MRR':>7}")
    for name, _, r, _ in rows:
        print(
            f"{name:<24} {r['hr@1']:7.4f} {r['hr@10']:7.4f} {r['ndcg@10']:8.4f} "
            f"{r['hr@50']:7.4f} {r['mrr']:7.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
