"""MoL approximates a similarity of rank far above its component dimension; a dot product cannot."""

from __future__ import annotations

import torch

from mol_core.similarity import MoLSimilarity


def test_mol_fits_a_high_rank_similarity_far_better_than_any_dot_product() -> None:
    torch.manual_seed(0)
    num_queries = num_items = 64
    components, dim, repr_dim = 4, 4, 32
    target = torch.randn(num_queries, num_items)  # a random (full rank: 64) similarity matrix

    # The best any dot product of embedding size Pq * d = 16 can do is the rank-16 SVD truncation
    # (Eckart-Young), so compare against that optimum rather than against a trained two-tower model.
    singular_values = torch.linalg.svdvals(target)
    rank = components * dim
    best_dot_error = float(
        singular_values[rank:].square().sum().sqrt() / singular_values.square().sum().sqrt()
    )

    sim = MoLSimilarity(
        query_input_dim=repr_dim,
        item_input_dim=repr_dim,
        query_components=components,
        item_components=components,
        component_dim=dim,
        gating_hidden_dim=64,
        gating_dropout=0.0,
    )
    query_repr = torch.nn.Parameter(torch.randn(num_queries, repr_dim))
    item_repr = torch.nn.Parameter(torch.randn(num_items, repr_dim))
    optimizer = torch.optim.Adam([*sim.parameters(), query_repr, item_repr], lr=1e-2)
    for _ in range(300):
        scores = sim.score_pairs(sim.query_side(query_repr), sim.item_side(item_repr))  # (64, 64)
        loss = (scores - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = sim.eval().score_pairs(sim.query_side(query_repr), sim.item_side(item_repr))
    mol_error = float((scores - target).norm() / target.norm())

    assert best_dot_error > 0.5  # the target really is beyond rank 16
    assert mol_error < 0.5 * best_dot_error, (mol_error, best_dot_error)
