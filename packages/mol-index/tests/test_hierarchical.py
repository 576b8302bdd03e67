"""The HSNN hierarchical index and its jointly trained layer, against exact search and hand counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mol_core.errors import ArtifactError, ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide, QuerySide, Similarity
from mol_index.layers.hierarchical import HierarchicalLayer
from mol_index.search.exact import exact_search
from mol_index.search.hierarchy import HierarchicalIndex

WIDE = 10_000  # a beam wider than any level: every cluster is expanded


def _dot_corpus(seed: int, num_items: int, batch: int) -> tuple[Similarity, QuerySide, ItemSide]:
    gen = torch.Generator().manual_seed(seed)
    sim = DotProductSimilarity(16, l2_normalize=True, temperature=0.1)
    centers = torch.randn(8, 16, generator=gen)
    items = centers[torch.randint(0, 8, (num_items,), generator=gen)] + 0.3 * torch.randn(
        num_items, 16, generator=gen
    )
    return sim, sim.query_side(torch.randn(batch, 16, generator=gen)), sim.item_side(items)


def _sub(corpus: ItemSide, rows: torch.Tensor) -> ItemSide:
    return ItemSide(corpus.embeddings[rows], None if corpus.gating is None else corpus.gating[rows])


def _recall(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (found.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().mean(1)  # (B,)


@pytest.mark.parametrize("kind", ["mol", "dot"])
@pytest.mark.parametrize("branching", [(6, 4), (4, 3, 2), (9,)])
def test_wide_beam_equals_exact_search(
    kind: str, branching: tuple[int, ...], mol_corpus: Callable[..., tuple], same_topk: Callable[..., None]
) -> None:
    sim, query, corpus = mol_corpus(0, 500, 6) if kind == "mol" else _dot_corpus(0, 500, 6)
    index = HierarchicalIndex.build(corpus, branching, seed=1)
    found = index.search(sim, query, 10, beam=WIDE)
    with torch.inference_mode():
        ref_scores, ref_rows = exact_search(sim, query, corpus, 10)
        full = sim.score_pairs(query, corpus)
    same_topk(found.scores, found.rows, ref_scores, ref_rows, full, tol=1e-5)
    total_clusters = sum(c.embeddings.shape[0] for c in index.centroids)
    assert found.scored.tolist() == [total_clusters + 500] * 6


def test_narrow_beam_misses_some_results_and_scored_matches_a_hand_count(
    mol_corpus: Callable[..., tuple],
) -> None:
    sim, query, corpus = mol_corpus(1, 800, 16, clusters=12)
    index = HierarchicalIndex.build(corpus, (8, 4), seed=0)
    found = index.search(sim, query, 10, beam=(2, 1))
    truth = exact_search(sim, query, corpus, 10)[1]
    assert float(_recall(found.rows, truth).min()) < 1.0  # the beam prunes: some results are missed
    assert int(found.scored.max()) < 800
    # hand count: a naive descent over the stored tensors
    t = index.to_tensors()
    for b in range(16):
        one = QuerySide(query.embeddings[b : b + 1], query.gating[b : b + 1])
        level1 = ItemSide(t["level0.embeddings"], t["level0.gating"])
        top1 = sim.score_pairs(one, level1)[0].topk(2).indices
        children = torch.isin(t["level1.parents"], top1).nonzero().squeeze(1)
        child_scores = sim.score_pairs(
            one, _sub(ItemSide(t["level1.embeddings"], t["level1.gating"]), children)
        )
        leaf = children[child_scores[0].argmax()]
        members = (t["leaf_of"] == leaf).nonzero().squeeze(1)
        expected = 8 + len(children) + max(len(members), 0)
        if len(members) >= 10:  # otherwise the search widened (tested below)
            assert int(found.scored[b]) == expected
            assert set(found.rows[b].tolist()) <= set(members.tolist())


def test_items_are_stored_as_residuals_of_their_leaf_centroid(mol_corpus: Callable[..., tuple]) -> None:
    _, _, corpus = mol_corpus(2, 300, 1)
    index = HierarchicalIndex.build(corpus, (5, 3), seed=0)
    rows = torch.arange(300)
    rebuilt = index.items(rows)
    torch.testing.assert_close(rebuilt.embeddings, corpus.embeddings, atol=1e-6, rtol=0)
    torch.testing.assert_close(rebuilt.gating, corpus.gating, atol=1e-6, rtol=0)
    leaves = index.centroids[-1]
    for leaf in range(index.num_leaves):  # a centroid is the mean of its members; residuals average to 0
        members = index.leaf_of == leaf
        assert int(members.sum()) > 0  # no empty clusters
        torch.testing.assert_close(
            leaves.embeddings[leaf], corpus.embeddings[members].mean(0), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            index.residuals.embeddings[members].mean(0), torch.zeros(2, 16), atol=1e-5, rtol=0
        )
    assert index.num_leaves <= 15
    assert index.num_items == 300


def test_exclusion_is_honoured_and_k_results_always_come_back(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(3, 400, 4)
    index = HierarchicalIndex.build(corpus, (8, 5), seed=0)
    truth = exact_search(sim, query, corpus, 30)[1]
    exclude = [truth[b, : 5 + b].tolist() for b in range(4)]
    # wide beam with exclusion equals exact search with the same exclusion
    found = index.search(sim, query, 10, beam=WIDE, exclude=exclude)
    ref_scores, _ref_rows = exact_search(sim, query, corpus, 10, exclude=exclude)
    torch.testing.assert_close(found.scores, ref_scores, atol=1e-5, rtol=0)
    # the narrowest beam must still return k distinct, live, non-excluded rows: the search widens
    for k in (1, 25, 120):
        found = index.search(sim, query, k, beam=1, exclude=exclude)
        assert bool((found.rows >= 0).all())
        assert bool(torch.isfinite(found.scores).all())
        for b in range(4):
            got = found.rows[b].tolist()
            assert len(set(got)) == k
            assert not set(got) & set(exclude[b])
    # when fewer than k items remain, the tail is padded like exact search
    everything = [list(range(395))] * 4
    found = index.search(sim, query, 10, beam=1, exclude=everything)
    assert (found.rows[:, 5:] == -1).all()
    assert set(found.rows[0, :5].tolist()) == set(range(395, 400))


def test_added_items_are_searchable_like_exact_search_over_the_enlarged_corpus(
    mol_corpus: Callable[..., tuple],
) -> None:
    sim, query, corpus = mol_corpus(4, 600, 5)
    index = HierarchicalIndex.build(_sub(corpus, torch.arange(450)), (6, 4), seed=0)
    centroids_before = index.centroids[-1].embeddings.clone()
    rows = index.add(_sub(corpus, torch.arange(450, 600)))
    assert rows.tolist() == list(range(450, 600))
    assert index.num_items == 600
    torch.testing.assert_close(index.centroids[-1].embeddings, centroids_before)  # no rebuild
    torch.testing.assert_close(
        index.items(torch.arange(600)).embeddings, corpus.embeddings, atol=1e-6, rtol=0
    )
    found = index.search(sim, query, 10, beam=WIDE)
    ref_scores, ref_rows = exact_search(sim, query, corpus, 10)
    assert torch.equal(found.rows, ref_rows)
    torch.testing.assert_close(found.scores, ref_scores, atol=1e-5, rtol=0)
    # an added item is attached to the leaf nearest it among the children of its nearest level-1 cluster
    flat = torch.cat([corpus.embeddings[500].flatten(), corpus.gating[500]])
    level1 = torch.cat([index.centroids[0].embeddings.flatten(1), index.centroids[0].gating], 1)
    top = torch.cdist(flat[None], level1)[0].argmin()
    leaves = torch.cat([index.centroids[1].embeddings.flatten(1), index.centroids[1].gating], 1)
    dist = torch.cdist(flat[None], leaves)[0].masked_fill(index.parents[1] != top, float("inf"))
    assert int(index.leaf_of[500]) == int(dist.argmin())


def test_removed_items_are_never_returned(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(5, 500, 5)
    index = HierarchicalIndex.build(corpus, (6, 4), seed=0)
    truth = exact_search(sim, query, corpus, 10)[1]
    gone = torch.unique(truth[:, :3].flatten())
    index.remove(gone)
    assert index.num_items == 500 - len(gone)
    assert index.num_rows == 500
    found = index.search(sim, query, 10, beam=WIDE)
    ref_scores, ref_rows = exact_search(sim, query, corpus, 10, exclude=[gone.tolist()] * 5)
    assert torch.equal(found.rows, ref_rows)
    torch.testing.assert_close(found.scores, ref_scores, atol=1e-5, rtol=0)
    narrow = index.search(sim, query, 50, beam=1)
    assert not torch.isin(narrow.rows, gone).any()
    assert bool((narrow.rows >= 0).all())
    added = index.add(_sub(corpus, gone))  # re-added copies get new rows; the old rows stay removed
    assert added.min() == 500
    assert not torch.isin(index.search(sim, query, 10, beam=WIDE).rows, gone).any()


def test_tensors_round_trip_through_safetensors(mol_corpus: Callable[..., tuple], tmp_path: Path) -> None:
    sim, query, corpus = mol_corpus(6, 400, 5)
    index = HierarchicalIndex.build(corpus, (5, 4), seed=0, gating_weight=0.5)
    index.add(_sub(corpus, torch.arange(10)))
    index.remove(torch.tensor([3, 17, 402]))
    save_file(index.to_tensors(), str(tmp_path / "h.safetensors"))
    loaded = HierarchicalIndex.from_tensors(load_file(str(tmp_path / "h.safetensors")))
    for beam in ((2, 3), WIDE):
        a, b = index.search(sim, query, 10, beam=beam), loaded.search(sim, query, 10, beam=beam)
        assert torch.equal(a.rows, b.rows)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.scored, b.scored)
    assert loaded.branching == (5, 4)
    assert loaded.gating_weight == 0.5
    assert loaded.num_items == index.num_items
    moved = loaded.to("cpu")
    assert torch.equal(moved.search(sim, query, 5, beam=2).rows, index.search(sim, query, 5, beam=2).rows)


def test_layer_loss_has_gradients_and_training_lowers_it(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(7, 256, 64)
    layer = HierarchicalLayer.for_similarity(sim, branching=(4, 2), temperature=0.5)
    assert layer(corpus) is corpus  # forward is the identity
    with torch.no_grad():  # random start, so that training has something to do
        for p in layer.parameters():
            p.normal_(generator=torch.Generator().manual_seed(0))
    positives = ItemSide(corpus.embeddings[:64].clone().requires_grad_(), corpus.gating[:64].clone())
    q = QuerySide(query.embeddings.clone().requires_grad_(), query.gating)
    loss = layer.loss(q, positives, sim)
    assert loss.dim() == 0
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    for grad in [*(p.grad for p in layer.parameters()), positives.embeddings.grad, q.embeddings.grad]:
        assert grad is not None
        assert float(grad.abs().sum()) > 0
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    start = float(layer.loss(query, _sub(corpus, torch.arange(64)), sim).detach())
    for step in range(200):
        rows = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        layer.loss(query, _sub(corpus, rows), sim).backward()
        opt.step()
    assert float(layer.loss(query, _sub(corpus, torch.arange(64)), sim).detach()) < 0.5 * start


def test_export_of_a_warm_started_layer_matches_build(
    mol_corpus: Callable[..., tuple], same_topk: Callable[..., None]
) -> None:
    sim, query, corpus = mol_corpus(8, 500, 6)
    layer = HierarchicalLayer.for_similarity(sim, branching=(6, 4))
    layer.warm_start(corpus, seed=3)
    assert bool(layer.warmed)
    built = HierarchicalIndex.build(corpus, (6, 4), seed=3)
    exported = layer.export_index(corpus)
    # the same top-down k-means: identical level-1 centroids and (on clustered data) the same partition
    torch.testing.assert_close(
        exported.centroids[0].embeddings, built.centroids[0].embeddings, atol=1e-5, rtol=0
    )
    assert exported.num_leaves == built.num_leaves
    assert float((exported.leaf_of == built.leaf_of).float().mean()) > 0.95
    found = exported.search(sim, query, 10, beam=WIDE)
    ref_scores, ref_rows = exact_search(sim, query, corpus, 10)
    same_topk(found.scores, found.rows, ref_scores, ref_rows, sim.score_pairs(query, corpus), tol=1e-5)
    # config text + state dict rebuild the same layer
    again = HierarchicalLayer.from_config(layer.config())
    again.load_state_dict(
        {k: v.float().to(again.state_dict()[k].dtype) for k, v in layer.state_dict().items()}
    )
    assert torch.equal(again.export_index(corpus).leaf_of, exported.leaf_of)


def test_layer_without_gating_for_a_dot_product() -> None:
    sim, query, corpus = _dot_corpus(9, 200, 8)
    layer = HierarchicalLayer.for_similarity(sim, branching=3)
    assert layer.config()["gating_dim"] == "0"
    assert layer.config()["branching"] == "3"
    layer.warm_start(corpus)
    loss = layer.loss(query, _sub(corpus, torch.arange(8)), sim)
    assert math.isfinite(float(loss.detach()))
    found = layer.export_index(corpus).search(sim, query, 5, beam=WIDE)
    assert torch.equal(found.rows, exact_search(sim, query, corpus, 5)[1])


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda c, s, q: HierarchicalIndex.build(c, ()), ConfigError, "branching"),
        (lambda c, s, q: HierarchicalIndex.build(c, (4, 1)), ConfigError, "branching"),
        (lambda c, s, q: HierarchicalIndex.build(c, (500,)), ConfigError, "too few items"),
        (lambda c, s, q: HierarchicalIndex.build(c, (4,), gating_weight=-1.0), ConfigError, "gating_weight"),
        (
            lambda c, s, q: HierarchicalIndex.build(ItemSide(c.embeddings[0], None), (4,)),
            ShapeError,
            "(N, Px, d)",
        ),
        (lambda c, s, q: _index(c).search(s, q, 5, beam=0), ConfigError, "beam"),
        (lambda c, s, q: _index(c).search(s, q, 5, beam=(2, 2, 2)), ConfigError, "one per level"),
        (lambda c, s, q: _index(c).search(s, q, 0, beam=2), ConfigError, "k must be"),
        (lambda c, s, q: _index(c).search(s, q, 201, beam=2), ConfigError, "k must be"),
        (lambda c, s, q: _index(c).add(ItemSide(c.embeddings[:, :1], c.gating)), ShapeError, "(n, Px, d)"),
        (lambda c, s, q: _index(c).add(ItemSide(c.embeddings, None)), ShapeError, "gating"),
        (lambda c, s, q: _index(c).remove(torch.tensor([200])), ConfigError, "rows to remove"),
        (
            lambda c, s, q: HierarchicalIndex.from_tensors({"branching": torch.tensor([2])}),
            ArtifactError,
            "lack",
        ),
        (
            lambda c, s, q: HierarchicalLayer(item_components=2, dim=16, branching=(1,)),
            ConfigError,
            "branching",
        ),
        (lambda c, s, q: HierarchicalLayer.for_similarity(s, temperature=0.0), ConfigError, "temperature"),
        (lambda c, s, q: HierarchicalLayer.from_config({"dim": "16"}), ConfigError, "unparsable"),
        (lambda c, s, q: HierarchicalLayer.from_config({"bogus": "1"}), ConfigError, "unknown"),
        (
            lambda c, s, q: HierarchicalLayer.for_similarity(s, branching=300).warm_start(c),
            ConfigError,
            "too few items",
        ),
        (
            lambda c, s, q: HierarchicalLayer.for_similarity(s).warm_start(ItemSide(c.embeddings, None)),
            ShapeError,
            "gating",
        ),
    ],
)
def test_bad_input_raises_a_named_error(
    call: Callable[..., object], error: type[Exception], words: str, mol_corpus: Callable[..., tuple]
) -> None:
    sim, query, corpus = mol_corpus(10, 200, 2)
    with pytest.raises(error) as info:
        call(corpus, sim, query)
    assert words in str(info.value)


def _index(corpus: ItemSide) -> HierarchicalIndex:
    return HierarchicalIndex.build(corpus, (4, 3), seed=0)
