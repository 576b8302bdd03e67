"""Behaviour of the similarity interface, DotProductSimilarity and MoLSimilarity against references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mol_core import ConfigError, ShapeError
from mol_core.losses import mutual_information_loss, sample_uniform_negatives, sampled_softmax_loss
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide

D_Q, D_X = 12, 10


def small_mol(**overrides: object) -> MoLSimilarity:
    kwargs: dict[str, object] = {
        "query_input_dim": D_Q,
        "item_input_dim": D_X,
        "query_components": 3,
        "item_components": 2,
        "component_dim": 8,
        "gating_hidden_dim": 16,
    }
    kwargs.update(overrides)
    return MoLSimilarity(**kwargs)  # type: ignore[arg-type]


def naive_mol_score(sim: MoLSimilarity, query_repr: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
    """phi(q, x) straight from the paper's formula, one pair at a time (eval mode, no user components)."""
    scores = torch.empty(query_repr.shape[0], item_repr.shape[0])
    d = sim.component_dim
    for i, q in enumerate(query_repr):
        f = F.normalize(sim.query_proj(q).view(-1, d), dim=-1)  # (Pq, d)
        q_gate = sim.gating.query_mlp(q)
        for j, x in enumerate(item_repr):
            g = F.normalize(sim.item_proj(x).view(-1, d), dim=-1)  # (Px, d)
            logits = torch.stack([f[a] @ g[b] for a in range(f.shape[0]) for b in range(g.shape[0])])
            logits = logits / sim.temperature
            w = F.silu(q_gate * sim.gating.item_mlp(x) + sim.gating.logits_mlp(logits))
            scores[i, j] = (torch.softmax(w, dim=0) * logits).sum()
    return scores


@torch.no_grad()
def test_mol_matches_the_formula_pair_by_pair() -> None:
    torch.manual_seed(0)
    sim = small_mol().eval()
    query_repr, item_repr = torch.randn(3, D_Q), torch.randn(5, D_X)
    got = sim.score_pairs(sim.query_side(query_repr), sim.item_side(item_repr))
    torch.testing.assert_close(got, naive_mol_score(sim, query_repr, item_repr), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_mol_with_one_component_each_is_cosine_over_tau() -> None:
    torch.manual_seed(1)
    sim = small_mol(query_components=1, item_components=1, temperature=0.07).eval()
    query_repr, item_repr = torch.randn(4, D_Q), torch.randn(6, D_X)
    got = sim.score_pairs(sim.query_side(query_repr), sim.item_side(item_repr))
    q = sim.query_proj(query_repr)  # (4, d)
    x = sim.item_proj(item_repr)  # (6, d)
    cosine = F.cosine_similarity(q.unsqueeze(1), x.unsqueeze(0), dim=-1)  # (4, 6)
    torch.testing.assert_close(got, cosine / 0.07, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_gating_weights_are_on_the_simplex(training: bool) -> None:
    torch.manual_seed(2)
    sim = small_mol(gating_dropout=0.5).train(training)
    query = sim.query_side(torch.randn(4, D_Q))
    _, weights = sim.score_pairs_with_weights(query, sim.item_side(torch.randn(4, 7, D_X)))
    assert weights.shape == (4, 7, sim.num_components)
    assert weights.dtype == torch.float32
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 7))
    if training:  # softmax dropout zeroes some weights before renormalising
        assert bool((weights == 0).any())


@torch.no_grad()
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blockwise_corpus_scoring_equals_paired_scoring(block_size: int) -> None:
    torch.manual_seed(3)
    sim = small_mol().eval()
    query = sim.query_side(torch.randn(5, D_Q))
    corpus = sim.item_side(torch.randn(100, D_X))
    full = sim.score_pairs(query, corpus)  # shared candidates, one shot
    torch.testing.assert_close(sim.score_corpus(query, corpus, block_size=block_size), full)
    # Per-query candidates gathered from the corpus score the same as the corpus columns.
    picks = torch.randint(0, 100, (5, 9))
    gathered = ItemSide(corpus.embeddings[picks], None if corpus.gating is None else corpus.gating[picks])
    torch.testing.assert_close(sim.score_pairs(query, gathered), full.gather(1, picks), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(4)
    sim = small_mol(user_components=1, user_input_dim=6, user_dropout=0.1).train()
    query_repr = torch.randn(8, D_Q, requires_grad=True)
    query = sim.query_side(query_repr, torch.randn(8, 6))
    positives = torch.randint(0, 50, (8,))
    item_table = torch.randn(50, D_X, requires_grad=True)
    pos_scores, weights = sim.score_pairs_with_weights(
        query, sim.item_side(item_table[positives].unsqueeze(1))
    )
    negatives = sample_uniform_negatives(8, 16, 50, generator=torch.Generator().manual_seed(0))
    neg_scores = sim.score_pairs(query, sim.item_side(item_table[negatives]))
    loss = sampled_softmax_loss(
        pos_scores.squeeze(1), neg_scores, positive_ids=positives, negative_ids=negatives
    ) + 0.001 * mutual_information_loss(weights)
    loss.backward()
    for name, param in [*sim.named_parameters(), ("query_repr", query_repr), ("item_table", item_table)]:
        assert param.grad is not None, name
        assert bool(param.grad.abs().sum() > 0), name


def test_training_outputs_are_deterministic_under_a_seed() -> None:
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        sim = small_mol(user_components=1, user_input_dim=4, user_dropout=0.3).train()
        query = sim.query_side(torch.randn(3, D_Q), torch.randn(3, 4))
        return sim.score_pairs(query, sim.item_side(torch.randn(20, D_X)))

    torch.testing.assert_close(run(7), run(7), rtol=0, atol=0)
    assert not torch.equal(run(7), run(8))


@torch.no_grad()
def test_bf16_autocast_is_finite_and_close_to_float32() -> None:
    torch.manual_seed(5)
    sim = MoLSimilarity(query_input_dim=50, item_input_dim=50).eval()  # the paper's ML-1M defaults
    query_repr, item_repr = torch.randn(4, 50), torch.randn(300, 50)
    reference = sim.score_corpus(sim.query_side(query_repr), sim.item_side(item_repr))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        query = sim.query_side(query_repr)
        corpus = sim.item_side(item_repr)
        got, weights = sim.score_pairs_with_weights(query, corpus)
    assert got.dtype == torch.float32
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(got))
    # cosines in bf16 carry ~3 significant digits; scores are cosines / 0.05, so allow ~0.01 * 20.
    assert float((got - reference).abs().max()) < 0.5
    # A model cast to bf16 entirely gives the same ranking of the top items.
    sim16 = sim.to(torch.bfloat16)
    got16 = sim16.score_corpus(sim16.query_side(query_repr.bfloat16()), sim16.item_side(item_repr.bfloat16()))
    assert bool(torch.isfinite(got16).all())
    assert float((got16 - reference).abs().max()) < 1.0


@torch.no_grad()
def test_dot_product_scores_and_cosine_option() -> None:
    torch.manual_seed(6)
    q, x = torch.randn(3, 16), torch.randn(11, 16)
    plain = DotProductSimilarity(16, temperature=2.0)
    torch.testing.assert_close(
        plain.score_corpus(plain.query_side(q), plain.item_side(x), block_size=4), q @ x.T / 2
    )
    cosine = DotProductSimilarity(16, l2_normalize=True, temperature=0.05)
    want = F.cosine_similarity(q.unsqueeze(1), x.unsqueeze(0), dim=-1) / 0.05
    torch.testing.assert_close(cosine.score_pairs(cosine.query_side(q), cosine.item_side(x)), want)
    _, weights = plain.score_pairs_with_weights(plain.query_side(q), plain.item_side(x))
    assert weights.shape == (3, 11, 1)
    assert bool((weights == 1).all())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"gating_dropout": 1.0}, "gating_dropout"),
        ({"component_dim": 0}, "component_dim"),
        ({"user_components": 3}, "user_components"),
        ({"user_components": 1}, "user_input_dim is required"),
        ({"user_input_dim": 4}, "user_components is 0"),
        ({"query_input_dim": -1}, "query_input_dim"),
    ],
)
def test_inconsistent_configuration_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_mol(**overrides)


def test_wrong_shapes_name_the_expected_shape() -> None:
    sim = small_mol()
    with pytest.raises(ShapeError, match=r"\(B, 12\)"):
        sim.query_side(torch.randn(2, 11))
    with pytest.raises(ShapeError, match=r"\(N, 10\)"):
        sim.item_side(torch.randn(10))
    with pytest.raises(ShapeError, match="user_components = 0"):
        sim.query_side(torch.randn(2, D_Q), torch.randn(2, 3))
    with_user = small_mol(user_components=1, user_input_dim=4)
    with pytest.raises(ShapeError, match="required"):
        with_user.query_side(torch.randn(2, D_Q))
    with pytest.raises(ShapeError, match=r"\(2, 4\)"):
        with_user.query_side(torch.randn(2, D_Q), torch.randn(3, 4))
    query = sim.query_side(torch.randn(2, D_Q))
    with pytest.raises(ShapeError, match=r"\(X, 2, 8\) or \(B=2, X, 2, 8\)"):
        sim.score_pairs(query, sim.item_side(torch.randn(3, 5, D_X)))
    with pytest.raises(ShapeError, match=r"\(N, 2, 8\)"):
        sim.score_corpus(query, sim.item_side(torch.randn(2, 5, D_X)))
    with pytest.raises(ShapeError, match="query embeddings"):
        sim.score_pairs(QuerySide(torch.randn(2, 4, 8), query.gating), sim.item_side(torch.randn(5, D_X)))
    corpus = sim.item_side(torch.randn(5, D_X))
    with pytest.raises(ShapeError, match="item gating"):
        sim.score_pairs(query, ItemSide(corpus.embeddings, torch.randn(5, 3)))
    with pytest.raises(ShapeError, match="needs query and item gating"):
        sim.score_pairs(QuerySide(query.embeddings, None), corpus)
    with pytest.raises(ConfigError, match="block_size"):
        sim.score_corpus(query, corpus, block_size=0)
    dot = DotProductSimilarity(8)
    with pytest.raises(ShapeError, match=r"\(B, 8\)"):
        dot.query_side(torch.randn(2, 7))
